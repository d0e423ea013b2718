package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
)

// siteBook is what the origin and the proxies keep of the sites below them:
// each site's status as its proxy last reported it, taken only from a proxy
// the signed index enrols for that site, so that no node can speak for a
// site, and bounded by the enrolments.
type siteBook struct {
	c *core
	// own is a proxy's own site, which it knows first hand; "" at the
	// origin.
	own string
	// answer returns the retries to pass down with every answer.
	answer func() []fleet.RetryOrder

	mu      sync.Mutex
	sites   map[string]fleet.SiteStatus
	refused map[peer.ID]adminapi.Unenrolled // reporters refused lately, a few
}

// maxRefused bounds the refused reporters a site book remembers.
const maxRefused = 64

func newSiteBook(c *core, own string, answer func() []fleet.RetryOrder) (*siteBook, error) {
	b := &siteBook{c: c, own: own, answer: answer, sites: map[string]fleet.SiteStatus{}, refused: map[peer.ID]adminapi.Unenrolled{}}
	err := c.db.each(bucketSites, func(name string, v []byte) error {
		var s fleet.SiteStatus
		if err := json.Unmarshal(v, &s); err != nil {
			return fmt.Errorf("site %s: %w", name, err)
		}
		b.sites[name] = s
		return nil
	})
	return b, err
}

// Status takes a status report from a proxy below: the sites it is
// enrolled for replace what was known of them; the others are refused and
// remembered, so that status can say who tried. The answer carries the
// retries ordered for the nodes below.
func (b *siteBook) Status(_ context.Context, from peer.ID, r *fleet.StatusReport) (*fleet.StatusAnswer, error) {
	ix := b.c.current()
	var taken []fleet.SiteStatus
	var refused []string
	for _, s := range r.Sites {
		switch {
		case s.Site == b.own:
			// A proxy knows its own site first hand.
		case ix != nil && ix.MayReport(from.String(), s.Site):
			taken = append(taken, s)
		default:
			refused = append(refused, s.Site)
		}
	}
	b.mu.Lock()
	for _, s := range taken {
		b.sites[s.Site] = s
	}
	if len(refused) > 0 {
		_, known := b.refused[from]
		if !known && len(b.refused) >= maxRefused {
			for p := range b.refused {
				delete(b.refused, p)
				break
			}
		}
		b.refused[from] = adminapi.Unenrolled{Peer: from.String(), Sites: refused, Seen: b.c.clock.Now().UTC()}
		if !known {
			b.c.log.Warn("agent: status refused from a peer not enrolled for its sites; enrol the site's proxy with patchctl enrol", "from", from, "sites", refused)
		}
	} else {
		delete(b.refused, from)
	}
	b.mu.Unlock()
	for _, s := range taken {
		if err := b.c.db.put(bucketSites, s.Site, s); err != nil {
			b.c.log.Warn("agent: keep site status", "site", s.Site, "err", err)
		}
	}
	if len(taken) > 0 {
		b.c.changed()
	}
	return &fleet.StatusAnswer{Retry: b.answer()}, nil
}

// below returns the sites reported from below whose reporter is still
// enrolled, by name.
func (b *siteBook) below() []fleet.SiteStatus {
	ix := b.c.current()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []fleet.SiteStatus
	for _, name := range slices.Sorted(maps.Keys(b.sites)) {
		if ix != nil && enrolledSite(ix, name) {
			out = append(out, b.sites[name])
		}
	}
	return out
}

// enrolledSite reports whether any proxy is enrolled to report site.
func enrolledSite(ix *manifest.Index, site string) bool {
	for _, e := range ix.Proxies {
		if slices.Contains(e.Sites, site) {
			return true
		}
	}
	return false
}

// unenrolled lists the reporters refused lately.
func (b *siteBook) unenrolled() []adminapi.Unenrolled {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := slices.Collect(maps.Values(b.refused))
	slices.SortFunc(out, func(x, y adminapi.Unenrolled) int { return strings.Compare(x.Peer, y.Peer) })
	return out
}

// fleetStatus is the fleet view of release (every release of ix if empty)
// over sites, at now.
func fleetStatus(ix *manifest.Index, sites []fleet.SiteStatus, release string, now time.Time) (adminapi.FleetStatus, error) {
	out := adminapi.FleetStatus{Releases: []adminapi.ReleaseStatus{}}
	if ix == nil {
		if release != "" {
			return out, fmt.Errorf("release %s: %w", release, errNoIndex)
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
	keys := map[string]bool{}
	for _, s := range sites {
		for _, n := range s.Nodes {
			for k := range n.Labels {
				keys[k] = true
			}
		}
	}
	out.LabelKeys = slices.Sorted(maps.Keys(keys))
	out.IndexVersion, out.IndexExpires = ix.Version, ix.Expires
	out.Warnings = expiryWarnings(ix, now)
	for _, e := range entries {
		rs := adminapi.ReleaseStatus{Name: e.Name, Withdrawn: e.Withdrawn, Uninstall: e.Uninstall, Sites: []adminapi.SiteCounts{}}
		for _, s := range sites {
			c := countSite(ix, e, s)
			if c.Nodes > 0 || (!e.Withdrawn && lifecycle.DeployedToSite(ix, e, s.Site)) {
				rs.Sites = append(rs.Sites, c)
			}
		}
		out.Releases = append(out.Releases, rs)
	}
	return out, nil
}

// countSite counts the nodes of s that e's deployments target, by state; for
// a withdrawn release, the nodes that had it.
func countSite(ix *manifest.Index, e manifest.IndexEntry, s fleet.SiteStatus) adminapi.SiteCounts {
	c := adminapi.SiteCounts{Site: s.Site, States: map[string]int{}, Failed: []adminapi.NodeReason{}, ProxyReplicated: slices.Contains(s.Replicated, e.Name)}
	for _, node := range s.Nodes {
		ds := fleet.DeploymentStatus{Release: e.Name, State: lifecycle.Pending}
		reported := false
		for _, d := range node.Deployments {
			if d.Release == e.Name {
				ds, reported = d, true
			}
		}
		f := lifecycle.NodeFacts{Site: s.Site, Target: node.Target, Node: node.ID, Labels: node.Labels}
		if e.Withdrawn && (!reported || ds.State == lifecycle.Pending) {
			continue
		}
		if !e.Withdrawn && !lifecycle.PlanFor(ix, e, f).Targeted {
			continue
		}
		c.Nodes++
		c.States[ds.State]++
		if ds.Have {
			c.Replicated++
		}
		if node.Offline {
			c.Offline = append(c.Offline, adminapi.NodeSeen{Node: node.ID, LastSeen: node.Seen})
		}
		switch ds.State {
		case lifecycle.Installed, lifecycle.RestartRequired:
			c.Installed++
		case lifecycle.Uninstalled:
			c.Uninstalled++
		case lifecycle.Failed, lifecycle.Refused:
			c.Failed = append(c.Failed, adminapi.NodeReason{Node: node.ID, State: ds.State, Reason: ds.Reason})
		case lifecycle.Blocked:
			c.Blocked = append(c.Blocked, adminapi.NodeReason{Node: node.ID, State: ds.State, Reason: ds.Reason})
		case lifecycle.Downloading:
			np := adminapi.NodeProgress{Node: node.ID, Bytes: ds.Bytes, Total: ds.Total}
			if ds.Total > 0 {
				np.Percent = float64(int(1000*float64(ds.Bytes)/float64(ds.Total))) / 10
			}
			c.Downloading = append(c.Downloading, np)
		}
	}
	byNode := func(x, y adminapi.NodeReason) int { return strings.Compare(x.Node, y.Node) }
	slices.SortFunc(c.Failed, byNode)
	slices.SortFunc(c.Blocked, byNode)
	slices.SortFunc(c.Downloading, func(x, y adminapi.NodeProgress) int { return strings.Compare(x.Node, y.Node) })
	slices.SortFunc(c.Offline, func(x, y adminapi.NodeSeen) int { return strings.Compare(x.Node, y.Node) })
	return c
}
