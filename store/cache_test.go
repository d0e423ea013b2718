package store_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

// countingUpstream serves frames from a store, counts requests, and can hold
// every request until released.
type countingUpstream struct {
	src   store.FrameGetter
	calls atomic.Int32
	gate  chan struct{} // nil: no waiting
}

func (u *countingUpstream) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	u.calls.Add(1)
	if u.gate != nil {
		select {
		case <-u.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return u.src.GetFrame(ctx, id)
}

// upstreamWith returns a store holding n chunks of size bytes, and their IDs.
func upstreamWith(t *testing.T, n, size int) (*store.Mem, []cid.Cid) {
	t.Helper()
	src := store.NewMem()
	var ids []cid.Cid
	for i := range n {
		data := storetest.Random(uint64(100+i), size)
		id := manifest.ChunkID(data)
		if err := src.Put(t.Context(), id, data); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return src, ids
}

func TestCacheFetchesAChunkOnceForManyWaiters(t *testing.T) {
	src, ids := upstreamWith(t, 1, 50<<10)
	up := &countingUpstream{src: src, gate: make(chan struct{})}
	c, err := store.NewCache(t.Context(), openDisk(t, t.TempDir()), up, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, err := c.Get(t.Context(), ids[0])
			if err == nil && !manifest.ChunkID(data).Equals(ids[0]) {
				err = errors.New("wrong content")
			}
			errs <- err
		}()
	}
	// Let the callers arrive while the first fetch is held: were misses
	// not coalesced, each would reach the upstream meanwhile.
	for up.calls.Load() == 0 {
		runtime.Gosched()
	}
	for range 1000 {
		runtime.Gosched()
	}
	close(up.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream was asked %d times, want once", n)
	}
	// Now it is local: no more upstream traffic.
	if _, err := c.GetFrame(t.Context(), ids[0]); err != nil || up.calls.Load() != 1 {
		t.Errorf("a cached chunk went upstream again: %v, %d calls", err, up.calls.Load())
	}
}

// lyingUpstream answers every request with a valid frame of other content.
type lyingUpstream struct{}

func (lyingUpstream) GetFrame(context.Context, cid.Cid) ([]byte, error) {
	return store.EncodeFrame(nil, []byte("something else")), nil
}

func TestCacheRefusesWhatTheUpstreamGetsWrong(t *testing.T) {
	_, ids := upstreamWith(t, 1, 1000)
	local := openDisk(t, t.TempDir())
	c, err := store.NewCache(t.Context(), local, lyingUpstream{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetFrame(t.Context(), ids[0]); !errors.Is(err, store.ErrMismatch) {
		t.Fatalf("GetFrame: %v, want ErrMismatch", err)
	}
	if ok, _ := local.Has(t.Context(), ids[0]); ok {
		t.Fatal("a chunk that failed verification was stored")
	}
}

func TestCacheEvictsLeastRecentlyUsedButNeverPinned(t *testing.T) {
	const size = 20 << 10 // random: stored raw, so each frame is ~20 KiB
	src, ids := upstreamWith(t, 6, size)
	local := openDisk(t, t.TempDir())
	// The release the site still needs pins the first chunk.
	if err := local.Pin(t.Context(), "SP-S041000005", ids[:1]); err != nil {
		t.Fatal(err)
	}
	c, err := store.NewCache(t.Context(), local, &countingUpstream{src: src}, 3*size+3*size/10)
	if err != nil {
		t.Fatal(err)
	}
	get := func(i int) {
		t.Helper()
		if _, err := c.GetFrame(t.Context(), ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	get(0) // pinned, and the least recently used from here on
	get(1)
	get(2)
	get(1) // 2 is now older than 1
	get(3) // over quota: 2 goes, the oldest unpinned
	get(4) // 1 goes
	has := func(i int) bool {
		ok, err := local.Has(t.Context(), ids[i])
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	want := []bool{true, false, false, true, true, false}
	for i, w := range want {
		if has(i) != w {
			t.Errorf("chunk %d held: %v, want %v", i, has(i), w)
		}
	}
	if st := c.Stats(); st.Bytes > st.Quota || st.Chunks != 3 {
		t.Errorf("stats %+v", st)
	}
}

func TestCacheTakesInWhatItHolds(t *testing.T) {
	src, ids := upstreamWith(t, 4, 10<<10)
	local := openDisk(t, t.TempDir())
	for _, id := range ids {
		frame, err := src.GetFrame(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if err := local.PutFrame(t.Context(), id, frame); err != nil {
			t.Fatal(err)
		}
	}
	up := &countingUpstream{src: src}
	c, err := store.NewCache(t.Context(), local, up, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Chunks != 4 {
		t.Errorf("stats %+v, want the 4 chunks held", st)
	}
	for _, id := range ids {
		if _, err := c.Get(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	if up.calls.Load() != 0 {
		t.Errorf("%d upstream calls for chunks held", up.calls.Load())
	}
}

// TestAppendFrameMatchesGetFrame checks every FrameAppender: the frame
// appended after a prefix is GetFrame's, from the cache's local store or
// through its upstream, and a missing chunk leaves dst as it was.
func TestAppendFrameMatchesGetFrame(t *testing.T) {
	src, ids := upstreamWith(t, 2, 50<<10)
	disk := openDisk(t, t.TempDir())
	want, err := src.GetFrame(t.Context(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.PutFrame(t.Context(), ids[0], want); err != nil {
		t.Fatal(err)
	}
	up := &countingUpstream{src: src}
	cache, err := store.NewCache(t.Context(), openDisk(t, t.TempDir()), up, 0)
	if err != nil {
		t.Fatal(err)
	}
	missing := manifest.ChunkID([]byte("no store holds this"))
	for _, tc := range []struct {
		name    string
		store   store.FrameAppender
		present cid.Cid
	}{
		{"mem", src, ids[0]},
		{"disk", disk, ids[0]},
		{"cache through its upstream", cache, ids[1]},
		{"cache from its local store", cache, ids[1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := src.GetFrame(t.Context(), tc.present)
			if err != nil {
				t.Fatal(err)
			}
			prefix := []byte("prefix")
			got, err := tc.store.AppendFrame(t.Context(), tc.present, slices.Clone(prefix))
			if err != nil || !bytes.Equal(got, append(slices.Clone(prefix), want...)) {
				t.Fatalf("AppendFrame: %d bytes, %v; want the prefix and the %d-byte frame", len(got), err, len(want))
			}
			if tc.store == store.FrameAppender(cache) {
				return // the cache would ask its upstream for the missing chunk
			}
			got, err = tc.store.AppendFrame(t.Context(), missing, prefix)
			if !errors.Is(err, store.ErrNotFound) || !bytes.Equal(got, prefix) {
				t.Errorf("AppendFrame of a missing chunk: %q, %v; want the prefix and ErrNotFound", got, err)
			}
		})
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the cache asked its upstream %d times, want once", n)
	}
}

func TestACacheFetchesAgainAChunkItsDiskFoundCorrupt(t *testing.T) {
	src, ids := upstreamWith(t, 2, 50<<10)
	up := &countingUpstream{src: src}
	local := openDisk(t, t.TempDir())
	c, err := store.NewCache(t.Context(), local, up, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := c.GetFrame(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	for i, read := range []func(cid.Cid) ([]byte, error){
		func(id cid.Cid) ([]byte, error) { return c.GetFrame(t.Context(), id) },
		func(id cid.Cid) ([]byte, error) { return c.AppendFrame(t.Context(), id, nil) },
	} {
		id := ids[i]
		loc, err := local.Locate(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		flip(t, loc.Pack, loc.Offset+loc.Size/2)
		before := up.calls.Load()
		frame, err := read(id)
		if err != nil {
			t.Fatalf("read %d of a corrupt chunk: %v", i, err)
		}
		want, _ := src.GetFrame(t.Context(), id)
		if !bytes.Equal(frame, want) {
			t.Errorf("read %d returned other bytes than the upstream's", i)
		}
		if up.calls.Load() != before+1 {
			t.Errorf("read %d asked the upstream %d times, want once", i, up.calls.Load()-before)
		}
		if _, err := local.Get(t.Context(), id); err != nil {
			t.Errorf("the chunk fetched again does not read from the disk: %v", err)
		}
	}
}
