package agentproto

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
)

func frame(t *testing.T, m *Msg) []byte {
	t.Helper()
	b, err := EncodeFrame(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFrameRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte{0, 1, 2, 0xF5, 'S', 'T', 'R'}, 1000)
	in := []*Msg{
		{T: THello, S: "nonce", N: ProtocolVersion},
		{T: TOut, S: "nonce", ID: 3, Stream: 2, Data: data},
		{T: TExec, S: "nonce", ID: 4, Exec: &ExecRequest{Argv: []string{"sh", "-c", "echo hi"}, Env: []string{"A=b"}, User: "u", Dir: "/d"}},
	}
	var stream bytes.Buffer
	for _, m := range in {
		stream.Write(frame(t, m))
	}
	d := NewDecoder(&stream)
	for i, want := range in {
		got, err := d.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.T != want.T || got.ID != want.ID || got.S != want.S || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("frame %d: got %+v want %+v", i, got, want)
		}
	}
	if _, err := d.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after last frame: %v", err)
	}
	if d.Skipped != 0 {
		t.Fatalf("skipped %d bytes of a clean stream", d.Skipped)
	}
}

func TestFrameTooLarge(t *testing.T) {
	_, err := EncodeFrame(&Msg{T: TData, Data: make([]byte, MaxPayload)})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
}

// TestDecoderResyncs feeds garbage, fake headers, truncated and corrupted
// frames between real ones: every intact frame comes out, nothing else.
func TestDecoderResyncs(t *testing.T) {
	rnd := rand.New(rand.NewSource(42))
	var stream bytes.Buffer
	var want []uint64
	for i := uint64(1); i <= 200; i++ {
		f := frame(t, &Msg{T: TOut, ID: i, Data: bytes.Repeat([]byte{byte(i)}, rnd.Intn(3*ChunkSize/2))})
		switch rnd.Intn(5) {
		case 0: // random garbage, with magic bytes sprinkled in
			g := make([]byte, rnd.Intn(300))
			rnd.Read(g)
			for j := 0; j+4 < len(g); j += 37 {
				copy(g[j:], magic[:])
			}
			stream.Write(g)
		case 1: // a truncated frame (a writer cut off mid-frame)...
			stream.Write(f[:rnd.Intn(len(f))])
			// ...is only recoverable with the session padding after it.
			stream.Write(make([]byte, PadSize))
		case 2: // a corrupted copy of the frame
			c := append([]byte(nil), f...)
			c[headerSize+rnd.Intn(len(c)-headerSize)] ^= 0x40
			stream.Write(c)
		}
		stream.Write(f)
		want = append(want, i)
	}
	d := NewDecoder(&stream)
	for _, id := range want {
		m, err := d.Next()
		if err != nil {
			t.Fatalf("waiting for frame %d: %v", id, err)
		}
		if m.ID != id || len(m.Data) > 0 && m.Data[0] != byte(id) {
			t.Fatalf("got frame %d, want %d", m.ID, id)
		}
	}
	if _, err := d.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("trailing: %v", err)
	}
	if d.Skipped == 0 {
		t.Fatal("nothing skipped")
	}
}

// oneByte delivers a stream a byte at a time (partial reads everywhere).
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestDecoderPartialReads(t *testing.T) {
	var stream bytes.Buffer
	stream.WriteString("junk")
	stream.Write(frame(t, &Msg{T: TExit, ID: 9, Code: 7}))
	m, err := NewDecoder(oneByte{&stream}).Next()
	if err != nil || m.T != TExit || m.Code != 7 {
		t.Fatalf("got %+v, %v", m, err)
	}
}

func TestDecoderReset(t *testing.T) {
	f := frame(t, &Msg{T: TEOF, ID: 1})
	r, w := io.Pipe()
	d := NewDecoder(r)
	go func() {
		_, _ = w.Write(f[:len(f)-3]) // half a frame, then the peer is gone
		_ = w.CloseWithError(io.EOF)
	}()
	if _, err := d.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("err = %v", err)
	}
	d.Reset()
	d.r = bytes.NewReader(frame(t, &Msg{T: TEOF, ID: 2}))
	m, err := d.Next()
	if err != nil || m.ID != 2 {
		t.Fatalf("after reset: %+v %v", m, err)
	}
}
