package p2p

import (
	"context"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/manifest"
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
// Status is what peers say of themselves: it decides nothing about what is
// installed (every node verifies what it installs against its trust root),
// so it is taken from any peer the swarm admits, keyed by the reporting
// peer, and shown as such.
const StatusProtocol protocol.ID = "/patchctl/status/1.0.0"

const (
	// MaxStatusMessage bounds a status report or answer.
	MaxStatusMessage = 16 << 20
	// MaxReportedDeployments bounds the releases one node reports.
	MaxReportedDeployments = 512
	// MaxStatusSites bounds the sites of one status report.
	MaxStatusSites = 4096
	// MaxSiteNodes bounds the nodes of one site in a status report.
	MaxSiteNodes = 100_000
	// MaxRetryOrders bounds the retries of one answer.
	MaxRetryOrders = 1024
	// MaxLabels bounds a node's labels.
	MaxLabels = 32
	// maxReasonLen bounds a reason; longer ones are cut by the sender.
	maxReasonLen = 2048
	maxLabelLen  = 128
)

// Lifecycle states of a release deployed to a node.
const (
	StatePending         = "pending"     // targeted, not yet downloading
	StateDownloading     = "downloading" // chunks arriving
	StateDownloaded      = "downloaded"  // every chunk here; waiting for a window or an operator
	StateInstalling      = "installing"
	StateFailed          = "failed"           // the install failed; Reason says why
	StateBlocked         = "blocked"          // waiting for a prerequisite; Reason names it
	StateRefused         = "refused"          // never on this node; Reason says why
	StateRestartRequired = "restart-required" // installed; takes effect when the agent restarts
	StateRetired         = "retired"          // was installed; a newer service pack replaced it
)

var lifecycleStates = map[string]bool{
	StatePending: true, StateDownloading: true, StateDownloaded: true, StateInstalling: true,
	StateInstalled: true, StateFailed: true, StateBlocked: true, StateRefused: true,
	StateRestartRequired: true, StateRetired: true,
}

// DeploymentStatus is a node's progress on one release deployed to it.
type DeploymentStatus struct {
	Release string `json:"release"`
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	// Have is true once every chunk of the release is stored.
	Have  bool  `json:"have,omitempty"`
	Bytes int64 `json:"bytes,omitempty"` // downloaded so far
	Total int64 `json:"total,omitempty"` // to download in all
	// Retry is the last retry generation the node acted on.
	Retry uint64 `json:"retry,omitempty"`
}

// NodeStatus is one node as its proxy last heard of it.
type NodeStatus struct {
	ID          string             `json:"id"`
	Target      string             `json:"target,omitempty"`
	Labels      map[string]string  `json:"labels,omitempty"`
	Seen        time.Time          `json:"seen"`
	Deployments []DeploymentStatus `json:"deployments,omitempty"`
}

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

// RetryOrder asks nodes to re-run a failed install of Release: every
// targeted node, or only Node. A node acts on each Generation once.
type RetryOrder struct {
	Release    string `json:"release"`
	Node       string `json:"node,omitempty"`
	Generation uint64 `json:"generation"`
}

// StatusAnswer is the upstream's answer to a status report.
type StatusAnswer struct {
	Retry []RetryOrder `json:"retry,omitempty"`
}

// Validate checks a report from the network.
func (r *StatusReport) Validate() error {
	if len(r.Sites) > MaxStatusSites {
		return fmt.Errorf("status report of %d sites, at most %d: %w", len(r.Sites), MaxStatusSites, ErrMalformed)
	}
	for _, s := range r.Sites {
		if err := manifest.ValidateSite(s.Site); err != nil {
			return fmt.Errorf("status report: %v: %w", err, ErrMalformed)
		}
		if _, err := peer.Decode(s.Proxy); err != nil {
			return fmt.Errorf("status report: site %s: proxy %q: %v: %w", s.Site, s.Proxy, err, ErrMalformed)
		}
		if len(s.Nodes) > MaxSiteNodes || len(s.Replicated) > MaxReportedDeployments {
			return fmt.Errorf("status report: site %s: %d nodes, %d releases: %w", s.Site, len(s.Nodes), len(s.Replicated), ErrMalformed)
		}
		for _, name := range s.Replicated {
			if _, err := manifest.ParsePackName(name); err != nil {
				return fmt.Errorf("status report: site %s: %v: %w", s.Site, err, ErrMalformed)
			}
		}
		for _, n := range s.Nodes {
			if _, err := peer.Decode(n.ID); err != nil {
				return fmt.Errorf("status report: site %s: node %q: %v: %w", s.Site, n.ID, err, ErrMalformed)
			}
			if err := validateFacts(n.Target, n.Labels, n.Deployments); err != nil {
				return fmt.Errorf("status report: site %s: node %s: %w", s.Site, n.ID, err)
			}
		}
	}
	return nil
}

// validateFacts checks what a node says of itself.
func validateFacts(target string, labels map[string]string, deps []DeploymentStatus) error {
	switch target {
	case "", "client", "server":
	default:
		return fmt.Errorf("target %q, want client or server: %w", target, ErrMalformed)
	}
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d: %w", len(labels), MaxLabels, ErrMalformed)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("label %q=%q: %w", k, v, ErrMalformed)
		}
	}
	if len(deps) > MaxReportedDeployments {
		return fmt.Errorf("%d deployments, at most %d: %w", len(deps), MaxReportedDeployments, ErrMalformed)
	}
	for _, d := range deps {
		if _, err := manifest.ParsePackName(d.Release); err != nil {
			return fmt.Errorf("%v: %w", err, ErrMalformed)
		}
		if !lifecycleStates[d.State] {
			return fmt.Errorf("release %s: unknown state %q: %w", d.Release, d.State, ErrMalformed)
		}
		if len(d.Reason) > maxReasonLen || !utf8.ValidString(d.Reason) {
			return fmt.Errorf("release %s: reason of %d bytes or not UTF-8: %w", d.Release, len(d.Reason), ErrMalformed)
		}
		if d.Bytes < 0 || d.Total < 0 {
			return fmt.Errorf("release %s: negative byte count: %w", d.Release, ErrMalformed)
		}
	}
	return nil
}

func validateRetries(orders []RetryOrder) error {
	if len(orders) > MaxRetryOrders {
		return fmt.Errorf("%d retries, at most %d: %w", len(orders), MaxRetryOrders, ErrMalformed)
	}
	for _, o := range orders {
		if _, err := manifest.ParsePackName(o.Release); err != nil {
			return fmt.Errorf("retry: %v: %w", err, ErrMalformed)
		}
		if o.Node != "" {
			if _, err := peer.Decode(o.Node); err != nil {
				return fmt.Errorf("retry of %s: node %q: %v: %w", o.Release, o.Node, err, ErrMalformed)
			}
		}
		if o.Generation == 0 {
			return fmt.Errorf("retry of %s: generation 0: %w", o.Release, ErrMalformed)
		}
	}
	return nil
}

// CutReason shortens a reason to what a report carries, keeping its end,
// where a hook's last lines are.
func CutReason(s string) string {
	if len(s) <= maxReasonLen {
		return s
	}
	s = s[len(s)-maxReasonLen+3:]
	for !utf8.ValidString(s) {
		s = s[1:]
	}
	return "..." + s
}

// DecodeStatusReport decodes and validates a status request.
func DecodeStatusReport(p []byte) (*StatusReport, error) {
	var r StatusReport
	if err := decodeJSON(p, &r); err != nil {
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
	if err := decodeJSON(p, &a); err != nil {
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
	g    *handlers
}

// NewStatusService registers the status handler on h.
func NewStatusService(h host.Host, sink StatusSink, log *slog.Logger) *StatusService {
	ss := &StatusService{h: h, sink: sink, idle: defaultIdleTimeout, g: newHandlers(log)}
	h.SetStreamHandler(StatusProtocol, func(s network.Stream) { ss.g.serve(s, ss.handle) })
	return ss
}

// Close removes the handler and ends the handlers running.
func (ss *StatusService) Close() error {
	ss.h.RemoveStreamHandler(StatusProtocol)
	ss.g.close()
	return nil
}

func (ss *StatusService) handle(ctx context.Context, s network.Stream) error {
	ds, p, err := readRequest(s, ss.idle, MaxStatusMessage)
	if err != nil {
		return fmt.Errorf("read status report: %w", err)
	}
	report, err := DecodeStatusReport(p)
	if err != nil {
		return err
	}
	answer, err := ss.sink.Status(ctx, s.Conn().RemotePeer(), report)
	if err != nil {
		ss.g.log.Warn("p2p: status failed", "err", err)
		return WriteFrame(ds, []byte{byte(StatusUnavailable)})
	}
	if answer == nil {
		answer = &StatusAnswer{}
	}
	answer.Retry = answer.Retry[:min(len(answer.Retry), MaxRetryOrders)]
	return writeJSONAnswer(ds, "status answer", answer, MaxStatusMessage)
}

// ReportStatus sends report to p, an upstream, and returns its answer.
func (c *Client) ReportStatus(ctx context.Context, p peer.ID, report *StatusReport) (*StatusAnswer, error) {
	if err := report.Validate(); err != nil {
		return nil, err
	}
	body, err := c.callJSON(ctx, p, StatusProtocol, "status report", report, MaxStatusMessage)
	if err != nil {
		return nil, err
	}
	a, err := DecodeStatusAnswer(body)
	if err != nil {
		return nil, fmt.Errorf("status %s: %w", p, err)
	}
	return a, nil
}
