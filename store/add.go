package store

import (
	"context"
	"fmt"
	"os"

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
	id := manifest.ChunkID(data)
	p := d.path(id)
	if added, present, err := d.addPresent(id, p); present || err != nil {
		return added, err
	}
	buf := getBuf(MaxFrameSize(len(data)))
	defer putBuf(buf)
	*buf = EncodeFrame((*buf)[:0], data)
	if err := d.write(id, p, *buf); err != nil {
		return Added{}, err
	}
	return Added{ID: id, StoredSize: int64(len(*buf)), New: true}, nil
}

// addPresent refreshes the chunk id stored at p, if it is, and reports what
// adding it again did.
func (d *Disk) addPresent(id cid.Cid, p string) (Added, bool, error) {
	present, err := d.refresh(id, p)
	if !present || err != nil {
		return Added{}, false, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return Added{}, false, fmt.Errorf("add %s: %w", id, err)
	}
	return Added{ID: id, StoredSize: fi.Size()}, true, nil
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
