package p2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

func TestChunkRoundTrip(t *testing.T) {
	for _, tn := range testNetworks {
		t.Run(tn.name, func(t *testing.T) {
			server, client := tn.pair(t)
			src := store.NewMem()
			data, ids := testChunks(6, 100<<10, 1)
			// One chunk of the largest size, incompressible, so the
			// largest frame crosses the wire.
			big, bigIDs := testChunks(1, manifest.MaxChunkSize, 2)
			data, ids = append(data, big...), append(ids, bigIDs...)
			putChunks(t, src, data)
			svc := NewChunkService(server, src, ChunkConfig{})
			t.Cleanup(func() { _ = svc.Close() })

			_, missing := testChunks(1, 10, 3)
			want := append([]cid.Cid{missing[0]}, ids...)
			want = append(want, missing[0])
			dst := store.NewMem()
			var got []cid.Cid
			err := GetChunks(testContext(t), client, server.ID(), want, func(id cid.Cid, frame []byte) error {
				got = append(got, id)
				if id == missing[0] {
					if frame != nil {
						t.Errorf("missing chunk came with a %d-byte frame", len(frame))
					}
					return nil
				}
				if frame == nil {
					t.Errorf("chunk %s not found", id)
					return nil
				}
				stored, err := src.GetFrame(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(frame, stored) {
					t.Errorf("chunk %s: frame differs from the stored frame", id)
				}
				return dst.PutFrame(t.Context(), id, frame)
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d chunks, want %d", len(got), len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("chunk %d is %s, want %s: out of order", i, got[i], want[i])
				}
			}
			for i, id := range ids {
				b, err := dst.Get(t.Context(), id)
				if err != nil || !bytes.Equal(b, data[i]) {
					t.Fatalf("chunk %d after PutFrame: %v", i, err)
				}
			}
		})
	}
}

// TestChunkPipelined fetches batches over many streams at once, as the
// fetcher does, to give the race detector something to look at.
func TestChunkPipelined(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	src := store.NewMem()
	data, ids := testChunks(64, 32<<10, 4)
	putChunks(t, src, data)
	svc := NewChunkService(server, src, ChunkConfig{})
	t.Cleanup(func() { _ = svc.Close() })

	c := &Client{Host: client}
	ctx := testContext(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			batch := ids[w*8 : w*8+8]
			errs <- c.GetChunks(ctx, server.ID(), batch, func(id cid.Cid, frame []byte) error {
				if frame == nil {
					return errors.New("missing")
				}
				_, err := store.DecodeFrame(nil, frame, manifest.MaxChunkSize)
				return err
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestChunkServerResetsGarbage(t *testing.T) {
	_, ids := testChunks(2, 10, 5)
	valid, err := EncodeChunkRequest(ids)
	if err != nil {
		t.Fatal(err)
	}
	uv := func(x uint64) []byte { return binary.AppendUvarint(nil, x) }
	cases := []struct {
		name string
		raw  []byte
	}{
		{"nothing", nil},
		{"oversized frame", append(uv(maxChunkRequest+1), make([]byte, 64)...)},
		{"length overflows", bytes.Repeat([]byte{0xff}, 11)},
		{"padded length", []byte{0x81, 0x00, 0x01}},
		{"truncated frame", append(uv(100), make([]byte, 10)...)},
		{"empty batch", frameOf(uv(0))},
		{"batch too large", frameOf(append(uv(MaxChunkBatch+1), bytes.Repeat(appendCID(nil, ids[0]), MaxChunkBatch+1)...))},
		{"count beyond CIDs", frameOf(append(uv(3), valid[1:]...))},
		{"garbage CID", frameOf(append(uv(1), append(uv(3), "abc"...)...))},
		{"manifest CID", frameOf(append(uv(1), appendCID(nil, testManifestID("x"))...))},
		{"trailing byte", frameOf(append(bytes.Clone(valid), 0))},
		{"two requests", append(frameOf(valid), frameOf(valid)...)},
	}
	for _, tn := range testNetworks[:2] {
		t.Run(tn.name, func(t *testing.T) {
			server, client := tn.pair(t)
			src := store.NewMem()
			data, ids := testChunks(2, 10, 5)
			putChunks(t, src, data)
			svc := NewChunkService(server, src, ChunkConfig{})
			t.Cleanup(func() { _ = svc.Close() })
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					got, err := sendRaw(t, client, server.ID(), ChunkProtocol, tc.raw)
					wantReset(t, got, err)
					// The server still serves well-formed requests.
					n := 0
					err = againAfterGarbage(t, client, server.ID(), func() error {
						n = 0
						return GetChunks(testContext(t), client, server.ID(), ids, func(cid.Cid, []byte) error { n++; return nil })
					})
					if err != nil || n != len(ids) {
						t.Fatalf("after %s: %d chunks, %v", tc.name, n, err)
					}
				})
			}
		})
	}
}

func TestChunkClientRejectsBadResponses(t *testing.T) {
	_, ids := testChunks(1, 10, 6)
	cases := []struct {
		name    string
		respond []byte
		want    error
	}{
		{"oversized frame", binary.AppendUvarint([]byte{}, uint64(maxChunkResponse+1)), ErrFrameTooLarge},
		{"unknown status", frameOf([]byte{7}), ErrMalformed},
		{"ok without frame", frameOf([]byte{byte(StatusOK)}), ErrMalformed},
		{"not found with bytes", frameOf([]byte{byte(StatusNotFound), 1}), ErrMalformed},
		{"truncated", append(binary.AppendUvarint(nil, 100), 0, 1, 2), nil},
		{"nothing", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := mocknetPair(t)
			server.SetStreamHandler(ChunkProtocol, func(s network.Stream) {
				_, _ = ReadFrame(smallReaders.get(s), maxChunkRequest)
				_, _ = s.Write(tc.respond)
				_ = s.Close()
			})
			called := false
			err := GetChunks(testContext(t), client, server.ID(), ids, func(cid.Cid, []byte) error { called = true; return nil })
			if err == nil || called {
				t.Fatalf("GetChunks = %v, callback called %v; want an error and no call", err, called)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("GetChunks = %v, want %v", err, tc.want)
			}
		})
	}
}

// stallingServer answers every stream for pid by reading the request and
// then doing nothing until the test ends, or trickling a byte at a time if
// trickle is set.
func stallingServer(t *testing.T, server host.Host, pid protocol.ID, trickle time.Duration) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	server.SetStreamHandler(pid, func(s network.Stream) {
		defer s.Reset()
		_, _ = ReadFrame(smallReaders.get(s), 1<<20)
		if trickle == 0 {
			<-done
			return
		}
		// A valid header for a large frame, then a byte at a time.
		_, _ = s.Write(append(binary.AppendUvarint(nil, 1<<20), byte(StatusOK)))
		tick := time.NewTicker(trickle)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if _, err := s.Write([]byte{0}); err != nil {
					return
				}
			}
		}
	})
}

func TestChunkClientGivesUpOnStalledPeer(t *testing.T) {
	cases := []struct {
		name    string
		trickle time.Duration
		client  Client
	}{
		{"silent", 0, Client{IdleTimeout: 200 * time.Millisecond}},
		{"trickling", 20 * time.Millisecond, Client{IdleTimeout: 5 * time.Second, ChunkTimeout: 300 * time.Millisecond}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Deadlines need a real transport: mocknet streams ignore them.
			server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
			stallingServer(t, server, ChunkProtocol, tc.trickle)
			_, ids := testChunks(1, 10, 7)
			c := tc.client
			c.Host = client
			start := time.Now()
			err := c.GetChunks(testContext(t), server.ID(), ids, func(cid.Cid, []byte) error { return nil })
			if err == nil {
				t.Fatal("GetChunks from a stalled peer succeeded")
			}
			if el := time.Since(start); el > testTimeout/2 {
				t.Fatalf("GetChunks took %v to give up", el)
			}
		})
	}
}

func TestChunkClientEndsWithContext(t *testing.T) {
	server, client := mocknetPair(t)
	stallingServer(t, server, ChunkProtocol, 0)
	_, ids := testChunks(1, 10, 8)
	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	go func() {
		errc <- GetChunks(ctx, client, server.ID(), ids, func(cid.Cid, []byte) error { return nil })
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("GetChunks = %v, want context.Canceled", err)
	}
}

func TestChunkCallbackErrorStopsBatch(t *testing.T) {
	server, client := mocknetPair(t)
	src := store.NewMem()
	data, ids := testChunks(4, 10, 9)
	putChunks(t, src, data)
	svc := NewChunkService(server, src, ChunkConfig{})
	t.Cleanup(func() { _ = svc.Close() })
	errStop := errors.New("stop")
	n := 0
	err := GetChunks(testContext(t), client, server.ID(), ids, func(cid.Cid, []byte) error { n++; return errStop })
	if !errors.Is(err, errStop) || n != 1 {
		t.Fatalf("GetChunks = %v after %d calls, want errStop after 1", err, n)
	}
}

func TestChunkServiceCloseEndsHandlers(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	// A limiter slow enough that a large chunk is still being sent when
	// the service closes.
	src := store.NewMem()
	data, ids := testChunks(1, 1<<20, 10)
	putChunks(t, src, data)
	svc := NewChunkService(server, src, ChunkConfig{Limiter: NewRateLimiter(64 << 10)})
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		ctx := testContext(t)
		s, err := client.NewStream(ctx, server.ID(), ChunkProtocol)
		if err != nil {
			errc <- err
			return
		}
		req, _ := EncodeChunkRequest(ids)
		_ = WriteFrame(s, req)
		_ = s.CloseWrite()
		var b [1]byte
		if _, err := s.Read(b[:]); err != nil {
			errc <- err
			return
		}
		close(started) // the response is under way
		_, err = io.ReadAll(s)
		errc <- err
	}()
	select {
	case <-started:
	case err := <-errc:
		t.Fatalf("no response started: %v", err)
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, network.ErrReset) {
		t.Fatalf("client read ended with %v, want a reset", err)
	}
}
