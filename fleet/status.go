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

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// StatusProtocol carries fleet status up the tree: a proxy reports its
// site's nodes (and the sites of the proxies below it) to its upstream, and
// learns the retries an operator ordered.
//
// Request, one frame, after which the client closes its write side: a
// StatusReport in JSON (at most MaxStatusMessage bytes).
// Response, one frame: a status byte, then for StatusOK a StatusAnswer in
// JSON (at most MaxStatusMessage bytes).
//
// A report is keyed by the authenticated peer of its stream: the receiver
// takes a site's status only from a proxy the signed index enrols for that
// site (see manifest.Index.Proxies).
const StatusProtocol protocol.ID = "/patchctl/status/1.0.0"

const (
	// MaxStatusMessage bounds a status report or answer.
	MaxStatusMessage = 16 << 20
	// MaxStatusSites bounds the sites of one status report.
	MaxStatusSites = 4096
	// MaxSiteNodes bounds the nodes of one site in a status report.
	MaxSiteNodes = 100_000
)

// SiteStatus is a site as its proxy sees it.
type SiteStatus struct {
	Site  string `json:"site"`
	Proxy string `json:"proxy"`
	// Replicated names the releases the proxy holds whole.
	Replicated []string     `json:"replicated,omitempty"`
	Nodes      []NodeStatus `json:"nodes"`
	Reported   time.Time    `json:"reported"`
}

// StatusReport is what a proxy sends its upstream: its own site, and the
// sites the proxies below it reported.
type StatusReport struct {
	Sites []SiteStatus `json:"sites"`
}

// StatusAnswer is the upstream's answer to a status report.
type StatusAnswer struct {
	Retry []RetryOrder `json:"retry,omitempty"`
}

// Validate checks a report from the network.
func (r *StatusReport) Validate() error {
	if len(r.Sites) > MaxStatusSites {
		return fmt.Errorf("status report of %d sites, at most %d: %w", len(r.Sites), MaxStatusSites, p2p.ErrMalformed)
	}
	for _, s := range r.Sites {
		if err := manifest.ValidateSite(s.Site); err != nil {
			return fmt.Errorf("status report: %v: %w", err, p2p.ErrMalformed)
		}
		if _, err := peer.Decode(s.Proxy); err != nil {
			return fmt.Errorf("status report: site %s: proxy %q: %v: %w", s.Site, s.Proxy, err, p2p.ErrMalformed)
		}
		if len(s.Nodes) > MaxSiteNodes || len(s.Replicated) > MaxReportedDeployments {
			return fmt.Errorf("status report: site %s: %d nodes, %d releases: %w", s.Site, len(s.Nodes), len(s.Replicated), p2p.ErrMalformed)
		}
		for _, name := range s.Replicated {
			if _, err := manifest.ParsePackName(name); err != nil {
				return fmt.Errorf("status report: site %s: %v: %w", s.Site, err, p2p.ErrMalformed)
			}
		}
		for _, n := range s.Nodes {
			if _, err := peer.Decode(n.ID); err != nil {
				return fmt.Errorf("status report: site %s: node %q: %v: %w", s.Site, n.ID, err, p2p.ErrMalformed)
			}
			if err := validateFacts(n.Target, n.Labels, n.Deployments); err != nil {
				return fmt.Errorf("status report: site %s: node %s: %w", s.Site, n.ID, err)
			}
		}
	}
	return nil
}

// DecodeStatusReport decodes and validates a status request.
func DecodeStatusReport(p []byte) (*StatusReport, error) {
	var r StatusReport
	if err := p2p.DecodeJSON(p, &r); err != nil {
		return nil, fmt.Errorf("status report: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeStatusAnswer decodes and validates a status answer.
func DecodeStatusAnswer(p []byte) (*StatusAnswer, error) {
	var a StatusAnswer
	if err := p2p.DecodeJSON(p, &a); err != nil {
		return nil, fmt.Errorf("status answer: %w", err)
	}
	if err := validateRetries(a.Retry); err != nil {
		return nil, fmt.Errorf("status answer: %w", err)
	}
	return &a, nil
}

// StatusSink takes status reports.
type StatusSink interface {
	// Status records from's report and returns the retries ordered for
	// the nodes below from.
	Status(ctx context.Context, from peer.ID, report *StatusReport) (*StatusAnswer, error)
}

// StatusService serves StatusProtocol.
type StatusService struct {
	h    host.Host
	sink StatusSink
	idle time.Duration
	g    *p2p.Handlers
	log  *slog.Logger
}

// NewStatusService registers the status handler on h.
func NewStatusService(h host.Host, sink StatusSink, log *slog.Logger) *StatusService {
	ss := &StatusService{h: h, sink: sink, idle: p2p.DefaultIdleTimeout, g: p2p.NewHandlers(log), log: orDiscard(log)}
	h.SetStreamHandler(StatusProtocol, func(s network.Stream) { ss.g.Serve(s, ss.handle) })
	return ss
}

// Close removes the handler and ends the handlers running.
func (ss *StatusService) Close() error {
	ss.h.RemoveStreamHandler(StatusProtocol)
	ss.g.Close()
	return nil
}

func (ss *StatusService) handle(ctx context.Context, s network.Stream) error {
	ds, p, err := p2p.ReadRequest(s, ss.idle, MaxStatusMessage)
	if err != nil {
		return fmt.Errorf("read status report: %w", err)
	}
	report, err := DecodeStatusReport(p)
	if err != nil {
		return err
	}
	answer, err := ss.sink.Status(ctx, s.Conn().RemotePeer(), report)
	if err != nil {
		ss.log.Warn("fleet: status failed", "err", err)
		return p2p.WriteFrame(ds, []byte{byte(p2p.StatusUnavailable)})
	}
	if answer == nil {
		answer = &StatusAnswer{}
	}
	answer.Retry = answer.Retry[:min(len(answer.Retry), MaxRetryOrders)]
	return p2p.WriteJSONAnswer(ds, "status answer", answer, MaxStatusMessage)
}

// ReportStatus sends report to p, an upstream, and returns its answer.
func (c *Client) ReportStatus(ctx context.Context, p peer.ID, report *StatusReport) (*StatusAnswer, error) {
	if err := report.Validate(); err != nil {
		return nil, err
	}
	body, err := c.c.CallJSON(ctx, p, StatusProtocol, "status report", report, MaxStatusMessage)
	if err != nil {
		return nil, err
	}
	a, err := DecodeStatusAnswer(body)
	if err != nil {
		return nil, fmt.Errorf("status %s: %w", p, err)
	}
	return a, nil
}
