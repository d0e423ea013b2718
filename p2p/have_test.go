package p2p

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/patchctl/patchctl/store"
)

func TestHaveBitmapThenUpdates(t *testing.T) {
	for _, tn := range testNetworks {
		t.Run(tn.name, func(t *testing.T) {
			server, client := tn.pair(t)
			mid := testManifestID("rel")
			data, ids := testChunks(20, 64, 11)
			st := store.NewMem()
			held := []int{0, 3, 7, 19}
			for _, i := range held {
				putChunks(t, st, data[i:i+1])
			}
			notifier := NewHaveNotifier()
			svc := NewHaveService(server, releases{mid: ids}, st, notifier, HaveConfig{})
			t.Cleanup(func() { _ = svc.Close() })

			sub, err := OpenHave(testContext(t), client, server.ID(), mid, len(ids))
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			if len(sub.Have) != 3 {
				t.Fatalf("bitmap of %d bytes for 20 chunks", len(sub.Have))
			}
			if n := svc.Subscribed(mid); n != 1 {
				t.Errorf("%d subscribed to the release, want 1", n)
			}
			for i := range ids {
				if sub.Have.Has(i) != slices.Contains(held, i) {
					t.Errorf("bitmap says chunk %d held: %v", i, sub.Have.Has(i))
				}
			}

			// A chunk of another release causes no update; new ones do,
			// once each, and so does one the bitmap held that was stored
			// again (quarantined and fetched back: a subscriber told it
			// was absent meanwhile must hear of it).
			_, other := testChunks(1, 64, 12)
			notifier.Stored(other[0])
			notifier.Stored(ids[3])
			for _, i := range []int{5, 6, 5, 8} {
				putChunks(t, st, data[i:i+1])
				notifier.Stored(ids[i])
			}
			var got []int
			ctx := testContext(t)
			for len(got) < 4 {
				select {
				case idx, ok := <-sub.Updates:
					if !ok {
						t.Fatalf("updates ended after %v: %v", got, sub.Err())
					}
					got = append(got, idx...)
				case <-ctx.Done():
					t.Fatalf("got updates %v, want [3 5 6 8]", got)
				}
			}
			if !slices.Equal(got, []int{3, 5, 6, 8}) {
				t.Fatalf("updates %v, want [3 5 6 8]", got)
			}

			// Closing the subscription ends the server's side of it.
			if err := sub.Close(); err != nil {
				t.Fatal(err)
			}
			if err := sub.Err(); err != nil {
				t.Fatalf("Err after Close = %v", err)
			}
			eventually(t, "the server to drop the subscription", func() bool { return notifier.Subscriptions() == 0 })
			eventually(t, "the server to count no subscriber", func() bool { return svc.Subscribed(mid) == 0 })
		})
	}
}

func TestHaveNotFound(t *testing.T) {
	server, client := mocknetPair(t)
	svc := NewHaveService(server, releases{}, store.NewMem(), NewHaveNotifier(), HaveConfig{})
	t.Cleanup(func() { _ = svc.Close() })
	_, err := OpenHave(testContext(t), client, server.ID(), testManifestID("none"), 5)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenHave = %v, want ErrNotFound", err)
	}
}

func TestHaveCountMismatch(t *testing.T) {
	server, client := mocknetPair(t)
	mid := testManifestID("rel")
	_, ids := testChunks(9, 64, 13)
	svc := NewHaveService(server, releases{mid: ids}, store.NewMem(), NewHaveNotifier(), HaveConfig{})
	t.Cleanup(func() { _ = svc.Close() })
	// 10 chunks fit the same 2-byte bitmap as 9: the count must match
	// exactly, not just the length.
	for _, n := range []int{8, 10, 17} {
		if _, err := OpenHave(testContext(t), client, server.ID(), mid, n); !errors.Is(err, ErrMalformed) {
			t.Errorf("OpenHave with %d chunks for a release of 9 = %v, want ErrMalformed", n, err)
		}
	}
}

func TestHaveServerResetsGarbage(t *testing.T) {
	mid := testManifestID("rel")
	valid, err := EncodeHaveRequest(mid)
	if err != nil {
		t.Fatal(err)
	}
	_, chunk := testChunks(1, 10, 14)
	cases := []struct {
		name string
		raw  []byte
	}{
		{"nothing", nil},
		{"oversized frame", frameOf(make([]byte, maxHaveRequest+1))},
		{"chunk CID", frameOf(appendCID(nil, chunk[0]))},
		{"garbage CID", frameOf([]byte{3, 'a', 'b', 'c'})},
		{"trailing byte", frameOf(append(bytes.Clone(valid), 0))},
		{"two requests", append(frameOf(valid), frameOf(valid)...)},
	}
	for _, tn := range testNetworks[:2] {
		t.Run(tn.name, func(t *testing.T) {
			server, client := tn.pair(t)
			_, ids := testChunks(3, 10, 15)
			svc := NewHaveService(server, releases{mid: ids}, store.NewMem(), NewHaveNotifier(), HaveConfig{})
			t.Cleanup(func() { _ = svc.Close() })
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					got, err := sendRaw(t, client, server.ID(), HaveProtocol, tc.raw)
					wantReset(t, got, err)
					var sub *HaveSubscription
					err = againAfterGarbage(t, client, server.ID(), func() (err error) {
						sub, err = OpenHave(testContext(t), client, server.ID(), mid, len(ids))
						return err
					})
					if err != nil {
						t.Fatalf("after %s: %v", tc.name, err)
					}
					_ = sub.Close()
				})
			}
		})
	}
}

func TestHaveClientRejectsBadUpdates(t *testing.T) {
	mid := testManifestID("rel")
	bitmap := frameOf(EncodeHaveResponse(StatusOK, NewBitmap(10), 10))
	cases := []struct {
		name    string
		respond []byte
		open    bool // whether OpenHave succeeds
	}{
		{"spare bits set", frameOf(EncodeHaveResponse(StatusOK, Bitmap{0, 0x01}, 10)), false},
		{"short bitmap", frameOf(EncodeHaveResponse(StatusOK, Bitmap{0}, 10)), false},
		{"index out of range", append(bitmap, frameOf(AppendHaveUpdate(nil, []int{3, 10}))...), true},
		{"empty update", append(bitmap, frameOf([]byte{0})...), true},
		{"oversized update", append(bitmap, frameOf(make([]byte, maxHaveUpdate+1))...), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := mocknetPair(t)
			server.SetStreamHandler(HaveProtocol, func(s network.Stream) {
				_, _ = ReadFrame(smallReaders.get(s), maxHaveRequest)
				_, _ = s.Write(tc.respond)
				_ = s.Close()
			})
			sub, err := OpenHave(testContext(t), client, server.ID(), mid, 10)
			if !tc.open {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("OpenHave = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			for idx := range sub.Updates {
				t.Errorf("update %v passed on", idx)
			}
			if err := sub.Err(); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("Err = %v, want ErrMalformed or ErrFrameTooLarge", err)
			}
		})
	}
}

func TestHaveSubscriptionEnds(t *testing.T) {
	mid := testManifestID("rel")
	_, ids := testChunks(3, 10, 16)
	cases := []struct {
		name    string
		end     func(svc *HaveService, cancel context.CancelFunc)
		wantErr bool
	}{
		{"service closes", func(svc *HaveService, _ context.CancelFunc) { _ = svc.Close() }, true},
		{"context ends", func(_ *HaveService, cancel context.CancelFunc) { cancel() }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := mocknetPair(t)
			notifier := NewHaveNotifier()
			svc := NewHaveService(server, releases{mid: ids}, store.NewMem(), notifier, HaveConfig{})
			t.Cleanup(func() { _ = svc.Close() })
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			sub, err := OpenHave(ctx, client, server.ID(), mid, len(ids))
			if err != nil {
				t.Fatal(err)
			}
			tc.end(svc, cancel)
			for range sub.Updates {
			}
			if err := sub.Err(); (err != nil) != tc.wantErr {
				t.Fatalf("Err = %v, want error: %v", err, tc.wantErr)
			}
			_ = sub.Close()
			_ = svc.Close()
			if n := notifier.Subscriptions(); n != 0 {
				t.Fatalf("%d subscriptions left after Close", n)
			}
		})
	}
}

func TestHaveSubscriptionLimit(t *testing.T) {
	server, client := mocknetPair(t)
	mid := testManifestID("rel")
	_, ids := testChunks(3, 10, 17)
	svc := NewHaveService(server, releases{mid: ids}, store.NewMem(), NewHaveNotifier(), HaveConfig{MaxSubscriptions: 1})
	t.Cleanup(func() { _ = svc.Close() })
	sub, err := OpenHave(testContext(t), client, server.ID(), mid, len(ids))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := OpenHave(testContext(t), client, server.ID(), mid, len(ids)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("second OpenHave = %v, want ErrUnavailable", err)
	}
}

func TestHaveNotifierNeverBlocks(t *testing.T) {
	var nilNotifier *HaveNotifier
	nilNotifier.Stored(cid.Undef) // a nil notifier ignores events

	n := NewHaveNotifier()
	_, ids := testChunks(100, 8, 18)
	index := make(map[cid.Cid]int)
	for i, id := range ids {
		index[id] = i
	}
	sub := n.subscribe(index, len(ids))
	// Nobody drains the subscription: Stored must still return, and the
	// queue holds each index once.
	for range 50 {
		for _, id := range ids {
			n.Stored(id)
		}
	}
	got := sub.take(nil)
	if len(got) != len(ids) {
		t.Fatalf("queued %d indexes for %d chunks", len(got), len(ids))
	}
	n.unsubscribe(sub)
	if n.Subscriptions() != 0 {
		t.Fatal("subscription left after unsubscribe")
	}
}
