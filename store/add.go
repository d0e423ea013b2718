package store

import (
	"context"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// Added is what Add did with a chunk.
type Added struct {
	ID         cid.Cid
	StoredSize int64 // bytes of the stored frame
	New        bool  // false if the chunk was already stored
}

// Adder stores chunks under the ID it computes itself. A publisher uses it
// instead of Put so that each chunk is hashed once, not once by the caller to
// name it and again by Put to check the name.
type Adder interface {
	Add(ctx context.Context, data []byte) (Added, error)
}

var (
	_ Adder = (*Disk)(nil)
	_ Adder = (*Mem)(nil)
)

// Add stores data under its chunk ID, with Put's guarantees.
func (d *Disk) Add(ctx context.Context, data []byte) (Added, error) {
	if err := ctx.Err(); err != nil {
		return Added{}, err
	}
	if err := d.writable("add"); err != nil {
		return Added{}, err
	}
	if len(data) > manifest.MaxChunkSize {
		return Added{}, fmt.Errorf("add: chunk of %d bytes: %w", len(data), manifest.ErrTooLarge)
	}
	id := manifest.ChunkID(data)
	if e, ok := d.lookup(id); ok {
		if _, err := d.refresh(id); err != nil {
			return Added{}, err
		}
		return Added{ID: id, StoredSize: int64(e.size)}, nil
	}
	buf := getBuf(MaxFrameSize(len(data)))
	defer putBuf(buf)
	*buf = EncodeFrame((*buf)[:0], data)
	stored, size, err := d.store(id, *buf, time.Now())
	if err != nil {
		return Added{}, err
	}
	return Added{ID: id, StoredSize: size, New: stored}, nil
}

// Add stores data under its chunk ID.
func (m *Mem) Add(ctx context.Context, data []byte) (Added, error) {
	if err := ctx.Err(); err != nil {
		return Added{}, err
	}
	id := manifest.ChunkID(data)
	if m.refresh(id) {
		m.mu.Lock()
		size := len(m.chunks[id].frame)
		m.mu.Unlock()
		return Added{ID: id, StoredSize: int64(size)}, nil
	}
	frame := EncodeFrame(nil, data)
	m.store(id, frame)
	return Added{ID: id, StoredSize: int64(len(frame)), New: true}, nil
}
