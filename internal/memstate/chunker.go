package memstate

// Content-defined chunking: a gear rolling hash over the stream cuts a
// chunk where the hash's top bits are all zero, so cuts depend only on the
// bytes just before them. An edit moves the cuts near it and no others: a
// state stream whose pages mostly match its parent's splits into mostly the
// same chunks.

const (
	minChunk = 4 << 10  // no cut before this many bytes
	maxChunk = 64 << 10 // always cut here
	// cutBits zero bits make a cut: one in 2^14 positions, 16 KiB on
	// average after minChunk.
	cutBits = 14
	cutMask = uint64(1<<cutBits-1) << (64 - cutBits)
)

// gear maps each byte to a fixed pseudo-random 64-bit value. The values
// must never change: chunk boundaries, and with them deduplication against
// states saved by earlier versions, depend on them.
var gear = func() (t [256]uint64) {
	x := uint64(0x9e3779b97f4a7c15) // splitmix64, fixed seed
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// cut returns the length of the first chunk of b: a content-defined
// boundary, or maxChunk, or len(b) when b holds no boundary and is shorter
// than maxChunk (the caller decides whether more data is coming).
func cut(b []byte) (n int, found bool) {
	if len(b) <= minChunk {
		return len(b), false
	}
	end := min(len(b), maxChunk)
	var h uint64
	// The hash only looks back 64 bytes: start it just before minChunk.
	for i := minChunk - 64; i < end; i++ {
		h = h<<1 + gear[b[i]]
		if i >= minChunk && h&cutMask == 0 {
			return i + 1, true
		}
	}
	return end, end == maxChunk
}
