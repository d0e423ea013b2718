package store

import (
	"context"
	"sync"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// Chunk-sized buffers are pooled because fresh memory, its page faults and
// clearing, is what bulk work (Fsck, Extract, Put) pays most for
// (docs/decisions/0015).

// bufs pools buffers of at least minBuf bytes. Pointers to slices, so that
// putting one back does not allocate a slice header.
var bufs sync.Pool

// minBuf holds a frame of the largest chunk of the default chunking, so a
// pooled buffer fits any chunk of a default release.
var minBuf = MaxFrameSize(manifest.DefaultChunkParams.Max)

// getBuf returns a pooled buffer of length n.
func getBuf(n int) *[]byte {
	if b, ok := bufs.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, max(n, minBuf))
	return &b
}

// putBuf returns a buffer to the pool; the caller must not use it after.
func putBuf(b *[]byte) {
	bufs.Put(b)
}

// appendGetter is implemented by stores that can decode a chunk into a
// buffer the caller provides (Disk, Mem), sparing bulk readers an
// allocation per chunk.
type appendGetter interface {
	appendChunk(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error)
}

// getInto gets a chunk into *buf (replacing its contents) if g supports it,
// else with Get.
func getInto(ctx context.Context, g Getter, id cid.Cid, buf *[]byte) ([]byte, error) {
	if ag, ok := g.(appendGetter); ok {
		out, err := ag.appendChunk(ctx, id, (*buf)[:0])
		*buf = out[:0] // keep a buffer appendChunk grew
		return out, err
	}
	return g.Get(ctx, id)
}
