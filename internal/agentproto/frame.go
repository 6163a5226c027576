// Package agentproto is the wire protocol between the host (strata) and the
// guest agent (strata-agent), and the host-side Client.
//
// # Transport
//
// The agent talks over a virtio-serial port. The guest keeps one open file
// descriptor for the whole life of the VM, while the host side is a new
// socket connection after every restore (possibly several restores of the
// same memory image, possibly two at once). The byte stream is therefore
// not trustworthy at its edges: it can start in the middle of a frame, carry
// bytes written before a snapshot, or lose the tail of a frame when a peer
// goes away. The protocol copes with that in three ways:
//
//   - Framing resynchronises. A frame is
//     magic(4) | payload length(4, big endian) | CRC-32C of the length(4) |
//     payload | CRC-32C of the payload(4). A reader scans for the magic,
//     checks the header CRC (so garbage rarely looks like a header) and
//     the payload CRC; on any mismatch it drops one byte and scans again.
//     Payloads are at most MaxPayload bytes.
//   - Padding. A peer that starts a session first writes PadSize zero bytes.
//     Whatever half frame the reader was waiting to complete is thereby
//     completed (and rejected by its CRC), so the following frame is found.
//   - Sessions. The host opens a session with a hello carrying a random
//     nonce; the agent tags every frame it sends with that nonce, and the
//     host ignores any frame that carries another one (stale output from
//     before a snapshot, or from a previous connection).
//
// # Payload
//
// payload = JSON length(4, big endian) | JSON-encoded Msg | raw data bytes.
// The raw bytes are Msg.Data (output chunks, tar stream chunks, file
// contents), kept out of the JSON to avoid base64.
package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame layout constants.
const (
	// MaxPayload bounds a frame's payload (JSON header plus data).
	MaxPayload = 128 << 10
	// ChunkSize is the largest Data a sender puts in one frame.
	ChunkSize = 32 << 10
	// headerSize is magic + length + length CRC.
	headerSize = 12
	// trailerSize is the payload CRC.
	trailerSize = 4
	// maxFrame is the size of the largest frame.
	maxFrame = headerSize + MaxPayload + trailerSize
	// PadSize is the number of zero bytes a peer writes before opening a
	// session: enough to complete any partial frame the reader is stuck in.
	PadSize = maxFrame
)

// magic starts every frame. 0xF5 never appears in ASCII or in UTF-8 text.
var magic = [4]byte{0xF5, 'S', 'T', 'R'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrFrameTooLarge is returned by EncodeFrame when a message does not fit.
var ErrFrameTooLarge = errors.New("agentproto: frame too large")

// EncodeFrame serialises m into one frame.
func EncodeFrame(m *Msg) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", m.T, err)
	}
	plen := 4 + len(js) + len(m.Data)
	if plen > MaxPayload {
		return nil, fmt.Errorf("encode %s frame of %d bytes: %w", m.T, plen, ErrFrameTooLarge)
	}
	buf := make([]byte, headerSize+plen+trailerSize)
	copy(buf[0:4], magic[:])
	binary.BigEndian.PutUint32(buf[4:8], uint32(plen))
	binary.BigEndian.PutUint32(buf[8:12], crc32.Checksum(buf[4:8], castagnoli))
	p := buf[headerSize : headerSize+plen]
	binary.BigEndian.PutUint32(p[0:4], uint32(len(js)))
	copy(p[4:], js)
	copy(p[4+len(js):], m.Data)
	binary.BigEndian.PutUint32(buf[headerSize+plen:], crc32.Checksum(p, castagnoli))
	return buf, nil
}

// Decoder reads frames from a byte stream, skipping anything that is not a
// whole, intact frame.
type Decoder struct {
	r   io.Reader
	buf []byte // unconsumed bytes, buf[off:end]
	off int
	end int
	// Skipped counts bytes discarded while resynchronising.
	Skipped int64
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: r, buf: make([]byte, 2*maxFrame)}
}

// Reset forgets any buffered bytes (for example after the peer went away,
// so that a half frame from the old peer is not glued to the new one).
func (d *Decoder) Reset() { d.off, d.end = 0, 0 }

// fill makes at least n bytes available in buf[off:end], reading from r.
func (d *Decoder) fill(n int) error {
	if d.end-d.off >= n {
		return nil
	}
	if d.off > 0 {
		copy(d.buf, d.buf[d.off:d.end])
		d.end -= d.off
		d.off = 0
	}
	for d.end < n {
		k, err := d.r.Read(d.buf[d.end:])
		d.end += k
		if err != nil {
			if d.end >= n {
				return nil
			}
			return err
		}
		if k == 0 {
			// A reader returning 0, nil repeatedly would spin; treat it as
			// a transient end of data.
			return io.ErrNoProgress
		}
	}
	return nil
}

// skip discards n bytes as garbage.
func (d *Decoder) skip(n int) {
	d.off += n
	d.Skipped += int64(n)
}

// Next returns the next intact frame's message. Garbage before it is
// skipped. Errors come only from the underlying reader.
func (d *Decoder) Next() (*Msg, error) {
	for {
		if err := d.fill(headerSize); err != nil {
			return nil, err
		}
		b := d.buf[d.off:d.end]
		if b[0] != magic[0] || b[1] != magic[1] || b[2] != magic[2] || b[3] != magic[3] {
			// Jump to the next possible magic start.
			i := 1
			for i < len(b) && b[i] != magic[0] {
				i++
			}
			d.skip(i)
			continue
		}
		plen := int(binary.BigEndian.Uint32(b[4:8]))
		if crc32.Checksum(b[4:8], castagnoli) != binary.BigEndian.Uint32(b[8:12]) || plen < 4 || plen > MaxPayload {
			d.skip(1)
			continue
		}
		total := headerSize + plen + trailerSize
		if err := d.fill(total); err != nil {
			return nil, err
		}
		b = d.buf[d.off : d.off+total]
		p := b[headerSize : headerSize+plen]
		if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(b[headerSize+plen:]) {
			d.skip(1)
			continue
		}
		m, ok := decodePayload(p)
		if !ok {
			d.skip(1)
			continue
		}
		d.off += total
		return m, nil
	}
}

func decodePayload(p []byte) (*Msg, bool) {
	jl := int(binary.BigEndian.Uint32(p[0:4]))
	if jl > len(p)-4 {
		return nil, false
	}
	m := new(Msg)
	if err := json.Unmarshal(p[4:4+jl], m); err != nil || m.T == "" {
		return nil, false
	}
	if rest := p[4+jl:]; len(rest) > 0 {
		m.Data = append([]byte(nil), rest...)
	}
	return m, true
}
