package p2p

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/store"
)

func TestRateLimiterUnlimited(t *testing.T) {
	for _, rate := range []int{0, -1} {
		l := NewRateLimiter(rate)
		if l != nil || l.Limit() != 0 {
			t.Fatalf("NewRateLimiter(%d) is limited", rate)
		}
		var b bytes.Buffer
		if w := l.Writer(t.Context(), &b); w != &b {
			t.Fatalf("unlimited Writer wraps its writer")
		}
	}
}

func TestRateLimiterWriterEndsWithContext(t *testing.T) {
	l := NewRateLimiter(1 << 10)
	ctx, cancel := context.WithCancel(t.Context())
	var b bytes.Buffer
	w := l.Writer(ctx, &b)
	if _, err := w.Write(make([]byte, 1<<10)); err != nil { // the burst
		t.Fatal(err)
	}
	cancel()
	if n, err := w.Write(make([]byte, 1<<20)); err == nil || n != 0 {
		t.Fatalf("Write after cancel = %d, %v; want 0 and an error", n, err)
	}
}

// TestChunkUploadIsRateLimited serves a known number of bytes over two
// concurrent streams sharing one limiter and checks the time it took
// against the limit. Only a lower bound is asserted, so a slow machine
// cannot make it fail.
func TestChunkUploadIsRateLimited(t *testing.T) {
	const limit = 1 << 20
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	src := store.NewMem()
	// Incompressible, so each frame is as large as its chunk.
	data, ids := testChunks(8, 384<<10, 19)
	for i := 1; i < len(data); i += 2 {
		data[i], ids[i] = data[i-1], ids[i-1]
	}
	putChunks(t, src, data)
	total := 0
	for _, id := range ids {
		f, err := src.GetFrame(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		total += len(f)
	}
	svc := NewChunkService(server, src, ChunkConfig{Limiter: NewRateLimiter(limit)})
	t.Cleanup(func() { _ = svc.Close() })

	ctx := testContext(t)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for w := range 2 {
		wg.Go(func() {
			errs[w] = GetChunks(ctx, client, server.ID(), ids[w*4:w*4+4], func(cid.Cid, []byte) error { return nil })
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The bucket starts full: one second's worth passes at once.
	floor := time.Duration(0.8 * float64(total-limit) / limit * float64(time.Second))
	t.Logf("%d bytes at %d B/s took %v (floor %v)", total, limit, elapsed, floor)
	if elapsed < floor {
		t.Fatalf("%d bytes at %d B/s took %v, less than %v", total, limit, elapsed, floor)
	}
}
