package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
)

// Mem is a Store in memory, for tests and simulations. It keeps chunks as
// frames, like Disk, so that it compresses, caps, verifies and fails the
// same way. It is safe for concurrent use.
type Mem struct {
	mu     sync.Mutex
	chunks map[cid.Cid]memChunk
	pins   map[string][]cid.Cid
}

type memChunk struct {
	frame    []byte
	modified time.Time
}

var (
	_ Store  = (*Mem)(nil)
	_ Syncer = (*Mem)(nil)
)

// NewMem returns an empty in-memory store.
func NewMem() *Mem {
	return &Mem{
		chunks: make(map[cid.Cid]memChunk),
		pins:   make(map[string][]cid.Cid),
	}
}

// Put stores data under id.
func (m *Mem) Put(ctx context.Context, id cid.Cid, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := verify(id, data); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if m.refresh(id) {
		return nil
	}
	m.store(id, EncodeFrame(nil, data))
	return nil
}

// PutFrame stores a copy of frame under id after checking it.
func (m *Mem) PutFrame(ctx context.Context, id cid.Cid, frame []byte) error {
	return m.PutFrameContent(ctx, id, frame, nil)
}

// PutFrameContent is PutFrame that hands the content it verified to use, if
// set, once the chunk is stored.
func (m *Mem) PutFrameContent(ctx context.Context, id cid.Cid, frame []byte, use func(cid.Cid, []byte)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	buf := getBuf(0)
	defer putBuf(buf)
	content, err := checkFrame(buf, id, frame)
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	if !m.refresh(id) {
		m.store(id, bytes.Clone(frame))
	}
	if use != nil {
		use(id, content)
	}
	return nil
}

func (m *Mem) refresh(id cid.Cid) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.chunks[id]
	if ok {
		c.modified = time.Now()
		m.chunks[id] = c
	}
	return ok
}

func (m *Mem) store(id cid.Cid, frame []byte) {
	m.mu.Lock()
	m.chunks[id] = memChunk{frame: frame, modified: time.Now()}
	m.mu.Unlock()
}

func (m *Mem) frame(ctx context.Context, id cid.Cid) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	c, ok := m.chunks[id]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	// Frames are never modified in place, so they can be read unlocked.
	return c.frame, nil
}

// Get returns the verified content of a chunk.
func (m *Mem) Get(ctx context.Context, id cid.Cid) ([]byte, error) {
	return m.appendChunk(ctx, id, nil)
}

// appendChunk appends the verified content of a chunk to dst.
func (m *Mem) appendChunk(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
	frame, err := m.frame(ctx, id)
	if err != nil {
		return dst, err
	}
	return decodeChunk(dst, id, frame)
}

// GetFrame returns a copy of the stored frame of a chunk.
func (m *Mem) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	return m.AppendFrame(ctx, id, nil)
}

// AppendFrame appends the stored frame of a chunk to dst.
func (m *Mem) AppendFrame(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
	frame, err := m.frame(ctx, id)
	if err != nil {
		return dst, err
	}
	return append(dst, frame...), nil
}

// Has reports whether a chunk is stored.
func (m *Mem) Has(ctx context.Context, id cid.Cid) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return false, err
	}
	m.mu.Lock()
	_, ok := m.chunks[id]
	m.mu.Unlock()
	return ok, nil
}

// Stat returns the frame size and last Put time of a chunk.
func (m *Mem) Stat(ctx context.Context, id cid.Cid) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	c, ok := m.chunks[id]
	m.mu.Unlock()
	if !ok {
		return Info{}, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	return Info{StoredSize: int64(len(c.frame)), Modified: c.modified}, nil
}

// Delete removes a chunk.
func (m *Mem) Delete(ctx context.Context, id cid.Cid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := manifest.CheckChunkID(id); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.chunks, id)
	m.mu.Unlock()
	return nil
}

// deleteStale removes a chunk unless it was modified after cutoff, in one
// critical section with the check (see Disk.deleteStale).
func (m *Mem) deleteStale(ctx context.Context, id cid.Cid, cutoff time.Time) (int64, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.chunks[id]
	if !ok || c.modified.After(cutoff) {
		return 0, false, nil
	}
	delete(m.chunks, id)
	return int64(len(c.frame)), true, nil
}

// List calls fn for every chunk stored when List was called; fn may change
// the store.
func (m *Mem) List(ctx context.Context, fn func(cid.Cid) error) error {
	m.mu.Lock()
	ids := make([]cid.Cid, 0, len(m.chunks))
	for id := range m.chunks {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// Pin records a copy of ids under name.
func (m *Mem) Pin(ctx context.Context, name string, ids []cid.Cid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkPinName(name); err != nil {
		return err
	}
	for _, id := range ids {
		if err := manifest.CheckChunkID(id); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
	}
	m.mu.Lock()
	m.pins[name] = append([]cid.Cid{}, ids...)
	m.mu.Unlock()
	return nil
}

// Unpin removes name's pin.
func (m *Mem) Unpin(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkPinName(name); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.pins, name)
	m.mu.Unlock()
	return nil
}

// Pins returns a copy of every pin.
func (m *Mem) Pins(ctx context.Context) (map[string][]cid.Cid, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	pins := make(map[string][]cid.Cid, len(m.pins))
	for name, ids := range m.pins {
		pins[name] = slices.Clone(ids)
	}
	return pins, nil
}

// Sync does nothing: a Mem holds nothing a crash could keep.
func (m *Mem) Sync(ctx context.Context) error {
	return ctx.Err()
}
