package fleet

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// Bounds of what a node says of itself.
const (
	// MaxReportedDeployments bounds the releases one node reports.
	MaxReportedDeployments = 512
	// MaxLabels bounds a node's labels.
	MaxLabels = 32
	// MaxRetryOrders bounds the retries of one answer.
	MaxRetryOrders = 1024
	// maxReasonLen bounds a reason; longer ones are cut by the sender.
	maxReasonLen = 2048
	maxLabelLen  = 128
)

// DeploymentStatus is a node's progress on one release deployed to it.
type DeploymentStatus struct {
	Release string `json:"release"`
	// CID is the manifest CID of the version the state is about, once the
	// node knows it.
	CID    string `json:"cid,omitempty"`
	State  string `json:"state"` // one of package lifecycle's states
	Reason string `json:"reason,omitempty"`
	// Have is true once every chunk of the release is stored.
	Have  bool  `json:"have,omitempty"`
	Bytes int64 `json:"bytes,omitempty"` // downloaded so far
	Total int64 `json:"total,omitempty"` // to download in all
	// Retry is the last retry generation the node acted on.
	Retry uint64 `json:"retry,omitempty"`
}

// NodeStatus is one node as its proxy last heard of it.
type NodeStatus struct {
	ID     string            `json:"id"`
	Target string            `json:"target,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	Seen   time.Time         `json:"seen"`
	// Offline: the proxy has not heard from the node for longer than it
	// waits (a few poll intervals); what it reported last stands.
	Offline     bool               `json:"offline,omitempty"`
	Deployments []DeploymentStatus `json:"deployments,omitempty"`
}

// RetryOrder asks nodes to re-run a failed install of Release: every
// targeted node, or only Node. A node acts on each Generation once.
type RetryOrder struct {
	Release    string `json:"release"`
	Node       string `json:"node,omitempty"`
	Generation uint64 `json:"generation"`
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

// validateFacts checks what a node says of itself.
func validateFacts(target string, labels map[string]string, deps []DeploymentStatus) error {
	switch target {
	case "", "client", "server":
	default:
		return fmt.Errorf("target %q, want client or server: %w", target, p2p.ErrMalformed)
	}
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d: %w", len(labels), MaxLabels, p2p.ErrMalformed)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("label %q=%q: %w", k, v, p2p.ErrMalformed)
		}
	}
	if len(deps) > MaxReportedDeployments {
		return fmt.Errorf("%d deployments, at most %d: %w", len(deps), MaxReportedDeployments, p2p.ErrMalformed)
	}
	for _, d := range deps {
		if _, err := manifest.ParsePackName(d.Release); err != nil {
			return fmt.Errorf("%v: %w", err, p2p.ErrMalformed)
		}
		if d.CID != "" {
			if _, err := manifest.ParseManifestID(d.CID); err != nil {
				return fmt.Errorf("release %s: %v: %w", d.Release, err, p2p.ErrMalformed)
			}
		}
		if !lifecycle.ValidState(d.State) {
			return fmt.Errorf("release %s: unknown state %q: %w", d.Release, d.State, p2p.ErrMalformed)
		}
		if len(d.Reason) > maxReasonLen || !utf8.ValidString(d.Reason) {
			return fmt.Errorf("release %s: reason of %d bytes or not UTF-8: %w", d.Release, len(d.Reason), p2p.ErrMalformed)
		}
		if d.Bytes < 0 || d.Total < 0 {
			return fmt.Errorf("release %s: negative byte count: %w", d.Release, p2p.ErrMalformed)
		}
	}
	return nil
}

func validateRetries(orders []RetryOrder) error {
	if len(orders) > MaxRetryOrders {
		return fmt.Errorf("%d retries, at most %d: %w", len(orders), MaxRetryOrders, p2p.ErrMalformed)
	}
	for _, o := range orders {
		if _, err := manifest.ParsePackName(o.Release); err != nil {
			return fmt.Errorf("retry: %v: %w", err, p2p.ErrMalformed)
		}
		if o.Node != "" {
			if _, err := peer.Decode(o.Node); err != nil {
				return fmt.Errorf("retry of %s: node %q: %v: %w", o.Release, o.Node, err, p2p.ErrMalformed)
			}
		}
		if o.Generation == 0 {
			return fmt.Errorf("retry of %s: generation 0: %w", o.Release, p2p.ErrMalformed)
		}
	}
	return nil
}
