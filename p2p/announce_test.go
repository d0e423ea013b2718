package p2p

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// fixedIndex serves one index version and records who asked and who
// announced what.
type fixedIndex struct {
	version uint64
	env     []byte

	mu        sync.Mutex
	askers    []peer.ID
	announced map[peer.ID]uint64
}

func (x *fixedIndex) Index(_ context.Context, from peer.ID) (uint64, []byte, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.askers = append(x.askers, from)
	return x.version, x.env, nil
}

func (x *fixedIndex) Announced(from peer.ID, version uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.announced[from] = version
}

func TestIndexIsServedOnlyWhenNewerAndAnnouncementsArrive(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	src := &fixedIndex{version: 7, env: []byte("signed index v7"), announced: map[peer.ID]uint64{}}
	NewIndexService(server, src, src, IndexConfig{})
	c := &Client{Host: client}
	ctx := testContext(t)
	for _, tc := range []struct {
		held    uint64
		want    string
		wantErr error
	}{
		{0, "signed index v7", nil},
		{6, "signed index v7", nil},
		{7, "", ErrNotFound},
		{9, "", ErrNotFound},
	} {
		env, err := c.GetIndex(ctx, server.ID(), tc.held)
		if string(env) != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("held %d: got %q, %v; want %q, %v", tc.held, env, err, tc.want, tc.wantErr)
		}
	}
	if err := c.Announce(ctx, server.ID(), 8); err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if got := src.announced[client.ID()]; got != 8 {
		t.Errorf("the server heard version %d from the client, want 8", got)
	}
	if len(src.askers) != 4 || src.askers[0] != client.ID() {
		t.Errorf("the source saw askers %v, want the client four times", src.askers)
	}
}

func TestIndexAndAnnounceRefuseGarbage(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	src := &fixedIndex{version: 1, env: []byte("x"), announced: map[peer.ID]uint64{}}
	NewIndexService(server, src, src, IndexConfig{})
	for _, tc := range []struct {
		name string
		pid  protocol.ID
		raw  []byte
	}{
		{"index: version with trailing bytes", IndexProtocol, frameOf([]byte{1, 2})},
		{"index: overlong varint", IndexProtocol, frameOf([]byte{0x80, 0x00})},
		{"announce: version 0", AnnounceProtocol, frameOf([]byte{0})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sendRaw(t, client, server.ID(), tc.pid, tc.raw)
			wantReset(t, got, err)
		})
	}
}
