package manifest

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ChunkParams are the content-defined chunking sizes. They are part of the
// storage format: two publishers with different parameters produce different
// chunks from the same bytes, and so share nothing.
type ChunkParams struct {
	Min int `json:"min"`
	Avg int `json:"avg"` // a power of two
	Max int `json:"max"`
	// Method is how boundaries were chosen: ChunkingCDC (empty, what every
	// manifest before archive-aware chunking recorded) or ChunkingArchive.
	// Receivers never re-chunk, so to them it is a record of how the
	// publisher cut, not an instruction; publishers dedupe only with chunks
	// cut the same way.
	Method string `json:"method,omitempty"`
}

// Chunking methods.
const (
	// ChunkingCDC is FastCDC over each file's bytes (NewChunker).
	ChunkingCDC = ""
	// ChunkingArchive cuts ZIP and tar archives at their members' headers
	// and data, and uses FastCDC inside large members and for everything
	// else (NewArchiveChunker). The version moves with any change to where
	// the walker cuts.
	ChunkingArchive = "archive/1"
)

// maxMethodLen bounds ChunkParams.Method.
const maxMethodLen = 32

// DefaultChunkParams: an average of 64 KiB, between 16 KiB and 256 KiB.
// Service packs differ from their predecessors in many scattered places, so
// the bytes a site must move for the next pack shrink far more from small
// chunks than the manifest grows (docs/decisions/0001).
var DefaultChunkParams = ChunkParams{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}

// DefaultArchiveChunkParams are DefaultChunkParams with archive-aware
// chunking: what publishing uses unless told otherwise.
var DefaultArchiveChunkParams = ChunkParams{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10, Method: ChunkingArchive}

// MaxChunkSize bounds every chunk any supported parameter set can produce. A
// receiver refuses to decompress a chunk to more than this.
const MaxChunkSize = 4 << 20

// Validate reports whether p can be used for chunking.
func (p ChunkParams) Validate() error {
	switch {
	case p.Min < 64:
		return fmt.Errorf("chunk params: min %d is below 64 bytes: %w", p.Min, ErrInvalid)
	case p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunk params: avg %d is not a power of two: %w", p.Avg, ErrInvalid)
	case !(p.Min < p.Avg && p.Avg < p.Max):
		return fmt.Errorf("chunk params: want min < avg < max, have %d, %d, %d: %w", p.Min, p.Avg, p.Max, ErrInvalid)
	case p.Max > MaxChunkSize:
		return fmt.Errorf("chunk params: max %d is above %d: %w", p.Max, MaxChunkSize, ErrInvalid)
	case !validMethod(p.Method):
		return fmt.Errorf("chunk params: method %q is not 1 to %d of a-z, 0-9, '.', '/', '-' and '_': %w", p.Method, maxMethodLen, ErrInvalid)
	}
	return nil
}

// validMethod accepts any well-formed method name, not only the ones this
// build can chunk with: a manifest cut by a later walker is as good to a
// receiver as any other, since nothing on the receiving side re-chunks.
func validMethod(m string) bool {
	if len(m) > maxMethodLen {
		return false
	}
	for _, r := range m {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || strings.ContainsRune("./-_", r)) {
			return false
		}
	}
	return true
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
	look       int    // fill keeps at least this many bytes ahead, or the rest of the stream
	buf        []byte
	start, end int // unconsumed bytes are buf[start:end]
	err        error
}

// NewChunker returns a chunker reading r. It panics if p is invalid; callers
// with untrusted parameters check Validate first. It cuts with FastCDC
// whatever p.Method says; NewArchiveChunker is the archive-aware chunker.
func NewChunker(r io.Reader, p ChunkParams) *Chunker {
	return newChunker(r, p, p.Max)
}

// newChunker returns a chunker that reads look bytes ahead (at least Max).
func newChunker(r io.Reader, p ChunkParams, look int) *Chunker {
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
		look:      max(look, p.Max),
		buf:       make([]byte, 4*max(look, p.Max)),
	}
}

// Next returns the next chunk. The slice is valid until the following call to
// Next. At the end of the stream it returns io.EOF. A read error is returned
// as soon as it is seen, without the chunks still buffered: their boundaries
// may depend on bytes the reader never delivered.
func (c *Chunker) Next() ([]byte, error) {
	data, err := c.unconsumed()
	if err != nil {
		return nil, err
	}
	cut := c.boundary(data)
	c.start += cut
	return data[:cut], nil
}

// unconsumed fills the buffer as far as the look-ahead needs and returns the
// bytes not yet cut: io.EOF once there are none, a read error as soon as it
// is seen.
func (c *Chunker) unconsumed() ([]byte, error) {
	if c.end-c.start < c.look && c.err == nil {
		c.fill()
	}
	if c.err != nil && !errors.Is(c.err, io.EOF) {
		return nil, c.err
	}
	if c.end == c.start {
		return nil, io.EOF
	}
	return c.buf[c.start:c.end], nil
}

// maxEmptyReads is how many reads in a row may return no data and no error
// before the chunker gives up with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// fill reads until the buffer holds at least look unconsumed bytes or the
// reader ends. It moves the unconsumed bytes to the front only when look
// bytes would not fit behind them; the buffer holds 4*look, so that copy
// costs at most a third of the bytes chunked.
func (c *Chunker) fill() {
	if len(c.buf)-c.start < c.look {
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	for empty := 0; c.end-c.start < c.look && c.err == nil; {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		c.err = err
		if n > 0 {
			empty = 0
		} else if empty++; empty >= maxEmptyReads && err == nil {
			c.err = io.ErrNoProgress
		}
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
	normal := min(c.p.Avg, n)
	h, cut := scan(data[c.p.Min:normal], 0, c.maskSmall)
	if cut >= 0 {
		return c.p.Min + cut
	}
	_, cut = scan(data[normal:n], h, c.maskLarge)
	if cut >= 0 {
		return normal + cut
	}
	return n
}

// scan rolls the gear hash h over data and returns the length of the prefix
// whose last byte leaves h&mask == 0, or -1 and the hash after all of data.
//
// It is the hot loop of publishing, so it takes four bytes per iteration and
// shortens the chain of dependent instructions: h after two bytes is
// h<<2 + (g0<<1 + g1), where the bracket does not depend on h, so the chain
// is one shift-and-add (a single LEA) per two bytes; the hashes after the
// first and third byte are computed beside the chain, only for their tests.
// The loop bound len(data)-3 lets the compiler drop the bounds checks. The
// boundaries are exactly those of the one-byte loop h = h<<1 + gear[b]
// (TestScanMatchesReference, TestChunkBoundariesGolden).
func scan(data []byte, h, mask uint64) (uint64, int) {
	g := &gear
	i := 0
	for ; i < len(data)-3; i += 4 {
		g0, g1, g2, g3 := g[data[i]], g[data[i+1]], g[data[i+2]], g[data[i+3]]
		h1 := h<<1 + g0
		h2 := h<<2 + (g0<<1 + g1)
		h3 := h2<<1 + g2
		h = h2<<2 + (g2<<1 + g3)
		if h1&mask == 0 {
			return h1, i + 1
		}
		if h2&mask == 0 {
			return h2, i + 2
		}
		if h3&mask == 0 {
			return h3, i + 3
		}
		if h&mask == 0 {
			return h, i + 4
		}
	}
	for ; i < len(data); i++ {
		h = h<<1 + g[data[i]]
		if h&mask == 0 {
			return h, i + 1
		}
	}
	return h, -1
}
