package manifest

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// prngReader is an endless (or n-byte) stream of pseudo-random bytes from a
// PCG generator, produced on the fly so tests can chunk far more data than they
// hold. The bytes depend only on the seed, never on the sizes of the reads.
type prngReader struct {
	pcg  *rand.PCG
	left int64 // bytes still to produce; negative means endless
	word [8]byte
	off  int // unread bytes of word are word[off:]
}

func newPRNGReader(seed uint64, n int64) *prngReader {
	return &prngReader{pcg: rand.NewPCG(seed, seed^0x9e3779b97f4a7c15), left: n, off: 8}
}

func (r *prngReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.left > 0 && int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := 0
	for n < len(p) && r.off < 8 {
		p[n] = r.word[r.off]
		n++
		r.off++
	}
	for ; n+8 <= len(p); n += 8 {
		binary.LittleEndian.PutUint64(p[n:], r.pcg.Uint64())
	}
	for n < len(p) {
		if r.off == 8 {
			binary.LittleEndian.PutUint64(r.word[:], r.pcg.Uint64())
			r.off = 0
		}
		p[n] = r.word[r.off]
		n++
		r.off++
	}
	if r.left > 0 {
		r.left -= int64(n)
	}
	return n, nil
}

// prngBytes returns n pseudo-random bytes of the stream with the given seed.
func prngBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(newPRNGReader(seed, int64(n)), b); err != nil {
		panic(err)
	}
	return b
}
