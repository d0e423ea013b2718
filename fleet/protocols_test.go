package fleet

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/p2p"
)

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
	other := newTestHost(t)
	tr := &oneTracker{answer: peer.AddrInfo{ID: other.ID(), Addrs: other.Addrs()}, reports: map[peer.ID]*TrackerReport{}}
	NewTrackerService(server, tr, nil)
	release := testManifestID("release").String()
	report := &TrackerReport{Site: "branch-1", Releases: []TrackedRelease{{CID: release, State: StateFetching}}, Want: release,
		Target: "server", Labels: map[string]string{"ring": "canary"},
		Deployments: []DeploymentStatus{{Release: "SP-S041000005", State: lifecycle.Failed, Reason: "hook exited with status 3"}}}
	res, err := NewClient(&p2p.Client{Host: client}).Track(testContext(t), server.ID(), report)
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

func TestTrackerAndStatusRefuseGarbage(t *testing.T) {
	server, client := loopbackPair(t, "/ip4/127.0.0.1/tcp/0")
	NewTrackerService(server, &oneTracker{reports: map[peer.ID]*TrackerReport{}}, nil)
	NewStatusService(server, &statusSink{}, nil)
	for _, tc := range []struct {
		name string
		pid  protocol.ID
		raw  []byte
	}{
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
			{Release: "SP-S041000005", State: lifecycle.Downloading, Bytes: 10, Total: 40},
		}}},
	}}}
	a, err := NewClient(&p2p.Client{Host: client}).ReportStatus(testContext(t), server.ID(), report)
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
