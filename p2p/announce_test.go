package p2p

import (
	"context"
	"errors"
	"fmt"
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

// oneTracker names the same peer to every reporter and keeps the reports.
type oneTracker struct {
	answer  peer.AddrInfo
	mu      sync.Mutex
	reports map[peer.ID]*TrackerReport
}

func (o *oneTracker) Track(_ context.Context, from peer.ID, r *TrackerReport) ([]peer.AddrInfo, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reports[from] = r
	return []peer.AddrInfo{o.answer}, nil
}

func TestTrackerRecordsTheReporterAndNamesPeers(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	other := newTestHost(t, HostConfig{})
	tr := &oneTracker{answer: peer.AddrInfo{ID: other.ID(), Addrs: other.Addrs()}, reports: map[peer.ID]*TrackerReport{}}
	NewTrackerService(server, tr, nil)
	release := testManifestID("release").String()
	report := &TrackerReport{Site: "branch-1", Releases: []TrackedRelease{{CID: release, State: StateFetching}}, Want: release}
	peers, err := (&Client{Host: client}).Track(testContext(t), server.ID(), report)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 || peers[0].ID != other.ID() || fmt.Sprint(peers[0].Addrs) != fmt.Sprint(other.Addrs()) {
		t.Errorf("tracker named %v, want %s at %v", peers, other.ID(), other.Addrs())
	}
	tr.mu.Lock()
	got := tr.reports[client.ID()]
	tr.mu.Unlock()
	if got == nil || got.Site != "branch-1" || len(got.Releases) != 1 || got.Want != release {
		t.Errorf("tracker recorded %+v for the client", got)
	}
}

func TestAnnounceAndTrackerRefuseGarbage(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	src := &fixedIndex{version: 1, env: []byte("x"), announced: map[peer.ID]uint64{}}
	NewIndexService(server, src, src, IndexConfig{})
	NewTrackerService(server, &oneTracker{reports: map[peer.ID]*TrackerReport{}}, nil)
	for _, tc := range []struct {
		name string
		pid  protocol.ID
		raw  []byte
	}{
		{"index: version with trailing bytes", IndexProtocol, frameOf([]byte{1, 2})},
		{"index: overlong varint", IndexProtocol, frameOf([]byte{0x80, 0x00})},
		{"announce: version 0", AnnounceProtocol, frameOf([]byte{0})},
		{"tracker: not JSON", TrackerProtocol, frameOf([]byte("{site"))},
		{"tracker: bad site", TrackerProtocol, frameOf([]byte(`{"site":"../etc"}`))},
		{"tracker: unknown state", TrackerProtocol, frameOf([]byte(`{"site":"a","releases":[{"cid":"` + testManifestID("r").String() + `","state":"owned"}]}`))},
		{"tracker: two values", TrackerProtocol, frameOf([]byte(`{"site":"a"}{"site":"b"}`))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sendRaw(t, client, server.ID(), tc.pid, tc.raw)
			wantReset(t, got, err)
		})
	}
}
