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

func (o *oneTracker) Track(_ context.Context, from peer.ID, r *TrackerReport) (TrackResult, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reports[from] = r
	return TrackResult{Peers: []peer.AddrInfo{o.answer}, Retry: []RetryOrder{{Release: "SP-S041000005", Node: from.String(), Generation: 2}}}, nil
}

func TestTrackerRecordsTheReporterAndNamesPeers(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	other := newTestHost(t, HostConfig{})
	tr := &oneTracker{answer: peer.AddrInfo{ID: other.ID(), Addrs: other.Addrs()}, reports: map[peer.ID]*TrackerReport{}}
	NewTrackerService(server, tr, nil)
	release := testManifestID("release").String()
	report := &TrackerReport{Site: "branch-1", Releases: []TrackedRelease{{CID: release, State: StateFetching}}, Want: release,
		Target: "server", Labels: map[string]string{"ring": "canary"},
		Deployments: []DeploymentStatus{{Release: "SP-S041000005", State: StateFailed, Reason: "hook exited with status 3"}}}
	res, err := (&Client{Host: client}).Track(testContext(t), server.ID(), report)
	if err != nil {
		t.Fatal(err)
	}
	peers := res.Peers
	if len(res.Retry) != 1 || res.Retry[0].Node != client.ID().String() || res.Retry[0].Generation != 2 {
		t.Errorf("tracker ordered retries %+v, want generation 2 of SP-S041000005 for the client", res.Retry)
	}
	if len(peers) != 1 || peers[0].ID != other.ID() || fmt.Sprint(peers[0].Addrs) != fmt.Sprint(other.Addrs()) {
		t.Errorf("tracker named %v, want %s at %v", peers, other.ID(), other.Addrs())
	}
	tr.mu.Lock()
	got := tr.reports[client.ID()]
	tr.mu.Unlock()
	if got == nil || got.Site != "branch-1" || len(got.Releases) != 1 || got.Want != release ||
		got.Target != "server" || got.Labels["ring"] != "canary" || len(got.Deployments) != 1 || got.Deployments[0].Reason != "hook exited with status 3" {
		t.Errorf("tracker recorded %+v for the client", got)
	}
}

func TestAnnounceAndTrackerRefuseGarbage(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	src := &fixedIndex{version: 1, env: []byte("x"), announced: map[peer.ID]uint64{}}
	NewIndexService(server, src, src, IndexConfig{})
	NewTrackerService(server, &oneTracker{reports: map[peer.ID]*TrackerReport{}}, nil)
	NewStatusService(server, &statusSink{}, nil)
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
		{"tracker: bad target", TrackerProtocol, frameOf([]byte(`{"site":"a","target":"router"}`))},
		{"tracker: unknown lifecycle state", TrackerProtocol, frameOf([]byte(`{"site":"a","deployments":[{"release":"SP-S041000005","state":"done"}]}`))},
		{"tracker: negative bytes", TrackerProtocol, frameOf([]byte(`{"site":"a","deployments":[{"release":"SP-S041000005","state":"downloading","bytes":-1}]}`))},
		{"status: bad proxy", StatusProtocol, frameOf([]byte(`{"sites":[{"site":"a","proxy":"x","nodes":[]}]}`))},
		{"status: not JSON", StatusProtocol, frameOf([]byte(`[`))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sendRaw(t, client, server.ID(), tc.pid, tc.raw)
			wantReset(t, got, err)
		})
	}
}

// statusSink keeps the last report and orders one retry.
type statusSink struct {
	mu   sync.Mutex
	from peer.ID
	last *StatusReport
}

func (s *statusSink) Status(_ context.Context, from peer.ID, r *StatusReport) (*StatusAnswer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from, s.last = from, r
	return &StatusAnswer{Retry: []RetryOrder{{Release: "HF-S041000005-012", Generation: 7}}}, nil
}

func TestStatusTravelsUpAndRetriesComeBack(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	sink := &statusSink{}
	NewStatusService(server, sink, nil)
	report := &StatusReport{Sites: []SiteStatus{{
		Site: "branch-1", Proxy: client.ID().String(), Replicated: []string{"SP-S041000005"},
		Nodes: []NodeStatus{{ID: server.ID().String(), Target: "client", Deployments: []DeploymentStatus{
			{Release: "SP-S041000005", State: StateDownloading, Bytes: 10, Total: 40},
		}}},
	}}}
	a, err := (&Client{Host: client}).ReportStatus(testContext(t), server.ID(), report)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Retry) != 1 || a.Retry[0].Generation != 7 {
		t.Errorf("answer %+v, want the retry of generation 7", a)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.from != client.ID() || len(sink.last.Sites) != 1 || sink.last.Sites[0].Nodes[0].Deployments[0].Total != 40 {
		t.Errorf("recorded %+v from %s", sink.last, sink.from)
	}
}
