package store

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/ipfs/go-cid"
)

// Cache is a store in front of an upstream, the shape of a site proxy: a chunk
// asked of it that it lacks is fetched from the upstream once, however many
// callers ask for it at the same time, verified, stored locally and handed to
// every waiter. Its local bytes are kept under a quota by evicting the chunks
// used least recently, never a pinned one: pins name the releases the site
// still needs.
type Cache struct {
	local    Store
	upstream FrameGetter
	quota    int64

	mu      sync.Mutex
	lru     *list.List // of *cacheEntry, most recently used at the front
	entries map[cid.Cid]*list.Element
	used    int64
	flights map[cid.Cid]*flight
}

type cacheEntry struct {
	id   cid.Cid
	size int64
}

// flight is one upstream fetch that concurrent callers wait for.
type flight struct {
	done  chan struct{}
	frame []byte
	err   error
}

// CacheStats describes a cache's state.
type CacheStats struct {
	Chunks int
	Bytes  int64 // stored bytes of the cached chunks
	Quota  int64
}

// NewCache returns a cache over local that fetches what it lacks from
// upstream and keeps local at most quota stored bytes (0: no quota). The
// chunks local already holds are taken in, oldest first in eviction order.
func NewCache(ctx context.Context, local Store, upstream FrameGetter, quota int64) (*Cache, error) {
	c := &Cache{
		local:    local,
		upstream: upstream,
		quota:    quota,
		lru:      list.New(),
		entries:  make(map[cid.Cid]*list.Element),
		flights:  make(map[cid.Cid]*flight),
	}
	type held struct {
		id   cid.Cid
		info Info
	}
	var all []held
	err := local.List(ctx, func(id cid.Cid) error {
		info, err := local.Stat(ctx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil // deleted meanwhile
			}
			return err
		}
		all = append(all, held{id, info})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open cache: %w", err)
	}
	// Most recently written first, so the front of the list is the most
	// recently used, as it will be from now on.
	slices.SortFunc(all, func(a, b held) int { return b.info.Modified.Compare(a.info.Modified) })
	for _, h := range all {
		c.entries[h.id] = c.lru.PushBack(&cacheEntry{id: h.id, size: h.info.StoredSize})
		c.used += h.info.StoredSize
	}
	if err := c.evict(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// GetFrame returns the stored frame of id, fetching it from the upstream if
// the cache lacks it. Concurrent calls for a missing chunk share one upstream
// fetch. A frame from the upstream that does not verify is not stored, and
// every waiter gets an error wrapping ErrMismatch or ErrCorrupt.
func (c *Cache) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	frame, err := c.local.GetFrame(ctx, id)
	if err == nil {
		c.touch(id, int64(len(frame)))
		return frame, nil
	}
	// A corrupt chunk was quarantined by the read that found it: a miss,
	// which the upstream mends.
	if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	c.mu.Lock()
	f, ok := c.flights[id]
	if !ok {
		f = &flight{done: make(chan struct{})}
		c.flights[id] = f
		c.mu.Unlock()
		// A flight that stored the chunk may have ended between the miss
		// above and the lock: look again before going upstream.
		f.frame, f.err = c.local.GetFrame(ctx, id)
		if errors.Is(f.err, ErrNotFound) {
			// The fetch outlives any one caller: others may be waiting
			// for it. It ends with the first caller's context, whose
			// failure the others see and may retry.
			f.frame, f.err = c.fetch(ctx, id)
		} else if f.err == nil {
			c.touch(id, int64(len(f.frame)))
		}
		c.mu.Lock()
		delete(c.flights, id)
		close(f.done)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.frame, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// AppendFrame is GetFrame appending to dst: a chunk in the cache is read into
// dst without a frame of its own.
func (c *Cache) AppendFrame(ctx context.Context, id cid.Cid, dst []byte) ([]byte, error) {
	if local, ok := c.local.(FrameAppender); ok {
		out, err := local.AppendFrame(ctx, id, dst)
		if err == nil {
			c.touch(id, int64(len(out)-len(dst)))
			return out, nil
		}
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
			return dst, err
		}
	}
	frame, err := c.GetFrame(ctx, id)
	if err != nil {
		return dst, err
	}
	return append(dst, frame...), nil
}

// fetch gets id from the upstream, checks and stores it, and makes room.
func (c *Cache) fetch(ctx context.Context, id cid.Cid) ([]byte, error) {
	frame, err := c.upstream.GetFrame(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("cache: upstream: %w", err)
	}
	if err := c.local.PutFrame(ctx, id, frame); err != nil {
		return nil, fmt.Errorf("cache: chunk from upstream: %w", err)
	}
	c.touch(id, int64(len(frame)))
	if err := c.evict(ctx); err != nil {
		return nil, err
	}
	return frame, nil
}

// Get returns the verified content of id, fetching it if needed.
func (c *Cache) Get(ctx context.Context, id cid.Cid) ([]byte, error) {
	if _, err := c.GetFrame(ctx, id); err != nil {
		return nil, err
	}
	return c.local.Get(ctx, id)
}

// PutFrame stores a chunk that came by another path than the cache's
// upstream, such as a proxy replicating a release from several peers, so the
// cache counts it against its quota, and makes room.
func (c *Cache) PutFrame(ctx context.Context, id cid.Cid, frame []byte) error {
	if err := c.local.PutFrame(ctx, id, frame); err != nil {
		return err
	}
	c.touch(id, int64(len(frame)))
	return c.evict(ctx)
}

// Evict makes room now, as after a pin was removed.
func (c *Cache) Evict(ctx context.Context) error { return c.evict(ctx) }

// Has reports whether the cache holds id now, without asking the upstream.
func (c *Cache) Has(ctx context.Context, id cid.Cid) (bool, error) {
	return c.local.Has(ctx, id)
}

// touch records a use of id, adding it if the cache did not know it.
func (c *Cache) touch(id cid.Cid, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[id]; ok {
		c.lru.MoveToFront(e)
		return
	}
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, size: size})
	c.used += size
}

// evict deletes the least recently used unpinned chunks until the cache is
// within its quota. When every chunk left is pinned it stays over the quota:
// a release the site still needs outranks the quota.
func (c *Cache) evict(ctx context.Context) error {
	if c.quota <= 0 {
		return nil
	}
	c.mu.Lock()
	over := c.used > c.quota
	c.mu.Unlock()
	if !over {
		return nil
	}
	pins, err := c.local.Pins(ctx)
	if err != nil {
		return fmt.Errorf("cache: evict: %w", err)
	}
	pinned := make(map[cid.Cid]bool)
	for _, ids := range pins {
		for _, id := range ids {
			pinned[id] = true
		}
	}
	c.mu.Lock()
	var victims []*cacheEntry
	for e := c.lru.Back(); e != nil && c.used > c.quota; {
		prev := e.Prev()
		ce := e.Value.(*cacheEntry)
		if !pinned[ce.id] {
			c.lru.Remove(e)
			delete(c.entries, ce.id)
			c.used -= ce.size
			victims = append(victims, ce)
		}
		e = prev
	}
	c.mu.Unlock()
	for _, v := range victims {
		if err := c.local.Delete(ctx, v.id); err != nil {
			return fmt.Errorf("cache: evict %s: %w", v.id, err)
		}
	}
	return nil
}

// Stats returns what the cache holds.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Chunks: len(c.entries), Bytes: c.used, Quota: c.quota}
}
