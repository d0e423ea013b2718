package p2p

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// countingFrames counts how often each chunk is read from a store.
type countingFrames struct {
	store.FrameGetter
	mu    sync.Mutex
	reads map[cid.Cid]int
}

func (c *countingFrames) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	c.mu.Lock()
	c.reads[id]++
	c.mu.Unlock()
	return c.FrameGetter.GetFrame(ctx, id)
}

// TestProxyCacheFetchesEachChunkOnceForItsSite puts a store.Cache over an
// Upstream in front of ten site hosts that all ask for every chunk at once:
// the origin serves each chunk once.
func TestProxyCacheFetchesEachChunkOnceForItsSite(t *testing.T) {
	ctx := testContext(t)
	data, ids := testChunks(24, 32<<10, 7)
	originStore := store.NewMem()
	putChunks(t, originStore, data)
	counted := &countingFrames{FrameGetter: originStore, reads: map[cid.Cid]int{}}
	origin := newTestHost(t, HostConfig{})
	originSvc := NewChunkService(origin, counted, ChunkConfig{})
	t.Cleanup(func() { originSvc.Close() })

	// An unreachable upstream first: the proxy must fail over.
	gone := newTestHost(t, HostConfig{})
	goneID, goneAddrs := gone.ID(), gone.Addrs()
	gone.Close()

	proxy := newTestHost(t, HostConfig{})
	proxy.Peerstore().AddAddrs(origin.ID(), origin.Addrs(), peerstore.PermanentAddrTTL)
	proxy.Peerstore().AddAddrs(goneID, goneAddrs, peerstore.PermanentAddrTTL)
	cache, err := store.NewCache(ctx, store.NewMem(), NewUpstream(&Client{Host: proxy}, goneID, origin.ID()), 0)
	if err != nil {
		t.Fatal(err)
	}
	proxySvc := NewChunkService(proxy, cache, ChunkConfig{})
	t.Cleanup(func() { proxySvc.Close() })

	var wg sync.WaitGroup
	for range 10 {
		node := newTestHost(t, HostConfig{})
		node.Peerstore().AddAddrs(proxy.ID(), proxy.Addrs(), peerstore.PermanentAddrTTL)
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := 0
			err := GetChunks(ctx, node, proxy.ID(), ids, func(id cid.Cid, frame []byte) error {
				content, err := store.DecodeFrame(nil, frame, manifest.MaxChunkSize)
				if err != nil {
					return err
				}
				if err := manifest.VerifyChunk(id, content); err != nil {
					return err
				}
				got++
				return nil
			})
			if err != nil || got != len(ids) {
				t.Errorf("site node: %d of %d chunks, %v", got, len(ids), err)
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if n := counted.reads[id]; n != 1 {
			t.Errorf("the origin served chunk %s %d times, want once", id, n)
		}
	}
	// A chunk every upstream answers it lacks is not found, which the
	// proxy passes on as such; with an upstream it could not reach, it
	// cannot know, and says so.
	missing := manifest.ChunkID([]byte("nobody has this"))
	if _, err := NewUpstream(&Client{Host: proxy}, origin.ID()).GetFrame(ctx, missing); !errorsIsNotFound(err) {
		t.Errorf("GetFrame of a chunk nobody has: %v, want not found", err)
	}
	if _, err := cache.GetFrame(ctx, missing); err == nil || errorsIsNotFound(err) {
		t.Errorf("GetFrame with an unreachable upstream: %v, want a failure that is not not-found", err)
	}
}

func errorsIsNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }
