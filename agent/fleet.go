package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

var (
	errOriginOnly = errors.New("only the origin does that")
	errNodeOnly   = errors.New("only a node installs releases")
)

// FleetStatus is the fleet view of the releases of the index: per release
// and site, the nodes targeted, how many hold every chunk, how many
// installed, and each failure with its node and reason.
type FleetStatus struct {
	Releases []ReleaseStatus `json:"releases"`
}

// ReleaseStatus is one release of the fleet view.
type ReleaseStatus struct {
	Name  string       `json:"name"`
	Sites []SiteCounts `json:"sites"`
}

// SiteCounts is one release in one site. Only nodes count: proxies and the
// origin cache and serve, never install.
type SiteCounts struct {
	Site       string         `json:"site"`
	Nodes      int            `json:"nodes"`      // targeted by a deployment
	Replicated int            `json:"replicated"` // of those, holding every chunk
	Installed  int            `json:"installed"`  // installed, or installed until a restart
	States     map[string]int `json:"states"`     // every targeted node's state
	Failed     []NodeReason   `json:"failed"`     // failed or refused
	Blocked    []NodeReason   `json:"blocked,omitempty"`
	// Downloading is the progress of the nodes still downloading.
	Downloading []NodeProgress `json:"downloading,omitempty"`
	// ProxyReplicated: the site's proxy holds the release whole.
	ProxyReplicated bool `json:"proxy_replicated"`
}

// NodeProgress is a node's download.
type NodeProgress struct {
	Node    string  `json:"node"`
	Bytes   int64   `json:"bytes"`
	Total   int64   `json:"total"`
	Percent float64 `json:"percent"`
}

// NodeReason is a node and why it is where it is.
type NodeReason struct {
	Node   string `json:"node"`
	State  string `json:"state"`
	Reason string `json:"reason"`
}

// FleetStatus returns the status of release (every release of the index if
// empty) across the sites this agent hears of: at the origin the fleet, at a
// proxy its site and the sites below it.
func (n *Node) FleetStatus(release string) (FleetStatus, error) {
	a := n.agent
	if a == nil || n.cfg.Role == RoleNode {
		return FleetStatus{}, errors.New("a node has no fleet view; ask the origin")
	}
	sites := a.sitesBelow()
	a.mu.Lock()
	ix := a.held
	a.mu.Unlock()
	out := FleetStatus{Releases: []ReleaseStatus{}}
	if ix == nil {
		if release != "" {
			return out, fmt.Errorf("release %s: no index yet: %w", release, ErrReleaseNotFound)
		}
		return out, nil
	}
	entries := ix.Releases
	if release != "" {
		e, ok := ix.Lookup(release)
		if !ok {
			return out, fmt.Errorf("release %s is not in the index: %w", release, ErrReleaseNotFound)
		}
		entries = []manifest.IndexEntry{e}
	}
	for _, e := range entries {
		rs := ReleaseStatus{Name: e.Name, Sites: []SiteCounts{}}
		for _, s := range sites {
			c := countSite(ix, e, s)
			if c.Nodes > 0 || deployedToSite(ix, e, s.Site) {
				rs.Sites = append(rs.Sites, c)
			}
		}
		out.Releases = append(out.Releases, rs)
	}
	return out, nil
}

// countSite counts the nodes of s that e's deployments target, by state.
func countSite(ix *manifest.Index, e manifest.IndexEntry, s p2p.SiteStatus) SiteCounts {
	c := SiteCounts{Site: s.Site, States: map[string]int{}, Failed: []NodeReason{}, ProxyReplicated: slices.Contains(s.Replicated, e.Name)}
	for _, node := range s.Nodes {
		f := NodeFacts{Site: s.Site, Target: node.Target, Node: node.ID, Labels: node.Labels}
		if !planFor(ix, e, f).targeted {
			continue
		}
		ds := p2p.DeploymentStatus{Release: e.Name, State: p2p.StatePending}
		for _, d := range node.Deployments {
			if d.Release == e.Name {
				ds = d
			}
		}
		c.Nodes++
		c.States[ds.State]++
		if ds.Have {
			c.Replicated++
		}
		switch ds.State {
		case p2p.StateInstalled, p2p.StateRestartRequired:
			c.Installed++
		case p2p.StateFailed, p2p.StateRefused:
			c.Failed = append(c.Failed, NodeReason{Node: node.ID, State: ds.State, Reason: ds.Reason})
		case p2p.StateBlocked:
			c.Blocked = append(c.Blocked, NodeReason{Node: node.ID, State: ds.State, Reason: ds.Reason})
		case p2p.StateDownloading:
			np := NodeProgress{Node: node.ID, Bytes: ds.Bytes, Total: ds.Total}
			if ds.Total > 0 {
				np.Percent = float64(int(1000*float64(ds.Bytes)/float64(ds.Total))) / 10
			}
			c.Downloading = append(c.Downloading, np)
		}
	}
	slices.SortFunc(c.Failed, func(x, y NodeReason) int { return strings.Compare(x.Node, y.Node) })
	slices.SortFunc(c.Blocked, func(x, y NodeReason) int { return strings.Compare(x.Node, y.Node) })
	slices.SortFunc(c.Downloading, func(x, y NodeProgress) int { return strings.Compare(x.Node, y.Node) })
	return c
}
