package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// TrackerProtocol is a site's tracker, served by its proxy: a node reports
// the releases it is fetching, holds and has installed, and learns which
// peers of its site hold or are fetching a release, so that nodes swarm where
// multicast discovery does not reach.
//
// Request, one frame, after which the client closes its write side: a
// TrackerReport in JSON (at most MaxTrackerMessage bytes).
// Response, one frame: a status byte, then for StatusOK a TrackerAnswer in
// JSON (at most MaxTrackerMessage bytes).
// The reporter is the authenticated peer of the stream, never a field of the
// report, so no node can report for another.
const TrackerProtocol protocol.ID = "/patchctl/tracker/1.0.0"

const (
	// MaxTrackerMessage bounds a tracker request or answer.
	MaxTrackerMessage = 256 << 10
	// MaxTrackedReleases bounds the releases of one report.
	MaxTrackedReleases = 64
	// MaxTrackerPeers bounds the peers of one answer.
	MaxTrackerPeers = 32
	// maxPeerAddrs bounds the addresses of one peer in an answer.
	maxPeerAddrs = 8
)

// Release states a node reports to its tracker.
const (
	StateFetching  = "fetching"
	StateHave      = "have"
	StateInstalled = "installed"
)

// TrackerReport is what a node tells its site's tracker.
type TrackerReport struct {
	Site     string           `json:"site"`
	Releases []TrackedRelease `json:"releases,omitempty"`
	// Want, if set, is the manifest CID of a release whose holders the node
	// asks for.
	Want string `json:"want,omitempty"`
	// The node's facts and its progress on the releases deployed to it,
	// which the proxy passes up the tree as the site's status.
	Target      string             `json:"target,omitempty"`
	Labels      map[string]string  `json:"labels,omitempty"`
	Deployments []DeploymentStatus `json:"deployments,omitempty"`
}

// TrackedRelease is one release of a report.
type TrackedRelease struct {
	CID   string `json:"cid"`
	State string `json:"state"`
}

// TrackerAnswer lists peers of the reporter's site that hold or are fetching
// the release it wants, and the retries of failed installs an operator
// ordered for it.
type TrackerAnswer struct {
	Peers []TrackerPeer `json:"peers"`
	Retry []RetryOrder  `json:"retry,omitempty"`
}

// TrackResult is a decoded tracker answer.
type TrackResult struct {
	Peers []peer.AddrInfo
	Retry []RetryOrder
}

// TrackerPeer is a peer and the addresses the tracker knows for it.
type TrackerPeer struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs,omitempty"`
}

// Validate checks a report from the network.
func (r *TrackerReport) Validate() error {
	if err := manifest.ValidateSite(r.Site); err != nil {
		return fmt.Errorf("tracker report: %v: %w", err, p2p.ErrMalformed)
	}
	if len(r.Releases) > MaxTrackedReleases {
		return fmt.Errorf("tracker report of %d releases, at most %d: %w", len(r.Releases), MaxTrackedReleases, p2p.ErrMalformed)
	}
	for _, rel := range r.Releases {
		if _, err := manifest.ParseManifestID(rel.CID); err != nil {
			return fmt.Errorf("tracker report: %v: %w", err, p2p.ErrMalformed)
		}
		switch rel.State {
		case StateFetching, StateHave, StateInstalled:
		default:
			return fmt.Errorf("tracker report: unknown state %q: %w", rel.State, p2p.ErrMalformed)
		}
	}
	if r.Want != "" {
		if _, err := manifest.ParseManifestID(r.Want); err != nil {
			return fmt.Errorf("tracker report: %v: %w", err, p2p.ErrMalformed)
		}
	}
	if err := validateFacts(r.Target, r.Labels, r.Deployments); err != nil {
		return fmt.Errorf("tracker report: %w", err)
	}
	return nil
}

// Decode checks an answer from the network and decodes its peers.
func (a *TrackerAnswer) Decode() (TrackResult, error) {
	peers, err := a.addrInfos()
	if err != nil {
		return TrackResult{}, err
	}
	if err := validateRetries(a.Retry); err != nil {
		return TrackResult{}, fmt.Errorf("tracker answer: %w", err)
	}
	return TrackResult{Peers: peers, Retry: a.Retry}, nil
}

func (a *TrackerAnswer) addrInfos() ([]peer.AddrInfo, error) {
	if len(a.Peers) > MaxTrackerPeers {
		return nil, fmt.Errorf("tracker answer of %d peers, at most %d: %w", len(a.Peers), MaxTrackerPeers, p2p.ErrMalformed)
	}
	infos := make([]peer.AddrInfo, 0, len(a.Peers))
	for _, p := range a.Peers {
		id, err := peer.Decode(p.ID)
		if err != nil {
			return nil, fmt.Errorf("tracker answer: peer %q: %v: %w", p.ID, err, p2p.ErrMalformed)
		}
		if len(p.Addrs) > maxPeerAddrs {
			return nil, fmt.Errorf("tracker answer: peer %s has %d addresses, at most %d: %w", id, len(p.Addrs), maxPeerAddrs, p2p.ErrMalformed)
		}
		info := peer.AddrInfo{ID: id}
		for _, s := range p.Addrs {
			addr, err := ma.NewMultiaddr(s)
			if err != nil {
				return nil, fmt.Errorf("tracker answer: peer %s: address %q: %v: %w", id, s, err, p2p.ErrMalformed)
			}
			info.Addrs = append(info.Addrs, addr)
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// NewTrackerAnswer encodes r's peers, at most MaxTrackerPeers of them with at
// most 8 addresses each, and its retries, at most MaxRetryOrders.
func NewTrackerAnswer(r TrackResult) *TrackerAnswer {
	peers := r.Peers
	a := &TrackerAnswer{Peers: []TrackerPeer{}, Retry: r.Retry[:min(len(r.Retry), MaxRetryOrders)]}
	for _, info := range peers[:min(len(peers), MaxTrackerPeers)] {
		tp := TrackerPeer{ID: info.ID.String()}
		for _, addr := range info.Addrs[:min(len(info.Addrs), maxPeerAddrs)] {
			tp.Addrs = append(tp.Addrs, addr.String())
		}
		a.Peers = append(a.Peers, tp)
	}
	return a
}

// DecodeTrackerReport decodes and validates a tracker request.
func DecodeTrackerReport(p []byte) (*TrackerReport, error) {
	var r TrackerReport
	if err := p2p.DecodeJSON(p, &r); err != nil {
		return nil, fmt.Errorf("tracker report: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeTrackerAnswer decodes and validates a tracker answer.
func DecodeTrackerAnswer(p []byte) (TrackResult, error) {
	var a TrackerAnswer
	if err := p2p.DecodeJSON(p, &a); err != nil {
		return TrackResult{}, fmt.Errorf("tracker answer: %w", err)
	}
	return a.Decode()
}

// Tracker answers tracker reports.
type Tracker interface {
	// Track records from's report and returns peers of its site that hold
	// or are fetching report.Want (none if Want is empty), and the retries
	// ordered for from.
	Track(ctx context.Context, from peer.ID, report *TrackerReport) (TrackResult, error)
}

// TrackerService serves TrackerProtocol.
type TrackerService struct {
	h       host.Host
	tracker Tracker
	idle    time.Duration
	g       *p2p.Handlers
	log     *slog.Logger
}

// NewTrackerService registers the tracker handler on h.
func NewTrackerService(h host.Host, t Tracker, log *slog.Logger) *TrackerService {
	ts := &TrackerService{h: h, tracker: t, idle: p2p.DefaultIdleTimeout, g: p2p.NewHandlers(log), log: orDiscard(log)}
	h.SetStreamHandler(TrackerProtocol, func(s network.Stream) { ts.g.Serve(s, ts.handle) })
	return ts
}

// Close removes the handler and ends the handlers running.
func (ts *TrackerService) Close() error {
	ts.h.RemoveStreamHandler(TrackerProtocol)
	ts.g.Close()
	return nil
}

func (ts *TrackerService) handle(ctx context.Context, s network.Stream) error {
	ds, p, err := p2p.ReadRequest(s, ts.idle, MaxTrackerMessage)
	if err != nil {
		return fmt.Errorf("read tracker report: %w", err)
	}
	report, err := DecodeTrackerReport(p)
	if err != nil {
		return err
	}
	res, err := ts.tracker.Track(ctx, s.Conn().RemotePeer(), report)
	if err != nil {
		ts.log.Warn("fleet: tracker failed", "err", err)
		return p2p.WriteFrame(ds, []byte{byte(p2p.StatusUnavailable)})
	}
	return p2p.WriteJSONAnswer(ds, "tracker answer", NewTrackerAnswer(res), MaxTrackerMessage)
}

// Track sends report to the tracker p and returns the peers it names and
// the retries it orders.
func (c *Client) Track(ctx context.Context, p peer.ID, report *TrackerReport) (TrackResult, error) {
	if err := report.Validate(); err != nil {
		return TrackResult{}, err
	}
	body, err := c.c.CallJSON(ctx, p, TrackerProtocol, "tracker report", report, MaxTrackerMessage)
	if err != nil {
		return TrackResult{}, err
	}
	res, err := DecodeTrackerAnswer(body)
	if err != nil {
		return TrackResult{}, fmt.Errorf("tracker %s: %w", p, err)
	}
	return res, nil
}
