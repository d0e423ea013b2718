package manifest

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ChunkParams are the content-defined chunking sizes. They are part of the
// storage format: two publishers with different parameters produce different
// chunks from the same bytes, and so share nothing.
type ChunkParams struct {
	Min, Avg, Max int
}

// DefaultChunkParams: an average of 64 KiB, between 16 KiB and 256 KiB.
//
// Measured on a tar of a Go distribution with 1% of its bytes overwritten in
// 4 KiB runs at scattered places (see TestChunkSizeDedupe and
// docs/architecture.md), the share of chunks that survived the edit was about
// 89% at 64 KiB, 67% at 256 KiB and 27% at 1 MiB. Service packs differ from
// their predecessors in many scattered places, so the bytes a site must move
// for the next pack shrink far more from small chunks than the manifest grows
// (about 16,000 chunk IDs, ~1.3 MB of manifest, per GiB).
var DefaultChunkParams = ChunkParams{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}

// MaxChunkSize bounds every chunk any supported parameter set can produce. A
// receiver refuses to decompress a chunk to more than this.
const MaxChunkSize = 4 << 20

// Validate reports whether p can be used for chunking.
func (p ChunkParams) Validate() error {
	switch {
	case p.Min < 64:
		return fmt.Errorf("chunk params: min %d is below 64 bytes", p.Min)
	case p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunk params: avg %d is not a power of two", p.Avg)
	case !(p.Min < p.Avg && p.Avg < p.Max):
		return fmt.Errorf("chunk params: want min < avg < max, have %d, %d, %d", p.Min, p.Avg, p.Max)
	case p.Max > MaxChunkSize:
		return fmt.Errorf("chunk params: max %d is above %d", p.Max, MaxChunkSize)
	}
	return nil
}

// gear is the table of the gear rolling hash. It is derived from SHA-256 so it
// can be re-created and audited, and frozen by TestGearTableGolden: changing it
// changes every chunk boundary.
var gear = func() (t [256]uint64) {
	for i := range t {
		sum := sha256.Sum256([]byte(fmt.Sprintf("patchctl gear v1 %d", i)))
		t[i] = binary.LittleEndian.Uint64(sum[:8])
	}
	return t
}()

// Chunker splits a stream into content-defined chunks with FastCDC's gear hash
// and normalized chunking: below the average size a boundary needs two more
// zero bits than above it, which pulls chunk sizes towards the average. It
// reads through a fixed buffer, so memory does not grow with the stream.
type Chunker struct {
	r          io.Reader
	p          ChunkParams
	maskSmall  uint64 // used before the average size: harder to match
	maskLarge  uint64 // used after it: easier to match
	buf        []byte
	start, end int // unconsumed bytes are buf[start:end]
	err        error
}

// NewChunker returns a chunker reading r. It panics if p is invalid; callers
// with untrusted parameters check Validate first.
func NewChunker(r io.Reader, p ChunkParams) *Chunker {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	bits := 0
	for 1<<bits < p.Avg {
		bits++
	}
	// The top bits of a gear hash depend on the most bytes (up to 64), so
	// the masks test the top of the word.
	topMask := func(n int) uint64 { return ^uint64(0) << (64 - n) }
	return &Chunker{
		r:         r,
		p:         p,
		maskSmall: topMask(bits + 2),
		maskLarge: topMask(bits - 2),
		buf:       make([]byte, 2*p.Max),
	}
}

// Next returns the next chunk. The slice is valid until the following call to
// Next. At the end of the stream it returns io.EOF.
func (c *Chunker) Next() ([]byte, error) {
	if c.end-c.start < c.p.Max && c.err == nil {
		c.fill()
	}
	n := c.end - c.start
	if n == 0 {
		if c.err == nil || errors.Is(c.err, io.EOF) {
			return nil, io.EOF
		}
		return nil, c.err
	}
	cut := c.boundary(c.buf[c.start:c.end])
	chunk := c.buf[c.start : c.start+cut]
	c.start += cut
	return chunk, nil
}

// fill moves the unconsumed bytes to the front of the buffer and reads until
// it holds at least Max bytes or the reader ends.
func (c *Chunker) fill() {
	c.end = copy(c.buf, c.buf[c.start:c.end])
	c.start = 0
	for c.end < c.p.Max && c.err == nil {
		var n int
		n, c.err = c.r.Read(c.buf[c.end:])
		c.end += n
	}
}

// boundary returns the length of the chunk at the start of data.
func (c *Chunker) boundary(data []byte) int {
	n := len(data)
	if n <= c.p.Min {
		return n
	}
	if n > c.p.Max {
		n = c.p.Max
	}
	normal := c.p.Avg
	if normal > n {
		normal = n
	}
	var h uint64
	i := c.p.Min
	for ; i < normal; i++ {
		h = (h << 1) + gear[data[i]]
		if h&c.maskSmall == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = (h << 1) + gear[data[i]]
		if h&c.maskLarge == 0 {
			return i + 1
		}
	}
	return n
}
