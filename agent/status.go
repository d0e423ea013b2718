package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// Status travels up the tree: a node reports its facts and its releases'
// states to its site's proxy with every tracker report; a proxy reports its
// site, and the sites of the proxies below it, to its upstream; the origin
// keeps the fleet view. Retries an operator orders at the origin travel
// down in the answers.

// report sends this node's report to its site's tracker and returns the
// site peers it names for want (if defined), with their addresses added. e
// and state, if e is named, add the release being worked on.
func (a *agentState) report(ctx context.Context, e manifest.IndexEntry, state string, want cid.Cid) []peer.ID {
	cfg := a.n.cfg.AgentConfig
	r := &p2p.TrackerReport{Site: cfg.Site, Target: cfg.Target, Labels: cfg.Labels, Deployments: a.deployments()}
	a.mu.Lock()
	for _, s := range a.states {
		if s.CID != "" && s.CID != e.CID && (s.State == p2p.StateHave || s.State == p2p.StateInstalled || s.State == p2p.StateFetching) {
			r.Releases = append(r.Releases, p2p.TrackedRelease{CID: s.CID, State: s.State})
		}
	}
	a.mu.Unlock()
	slices.SortFunc(r.Releases, func(x, y p2p.TrackedRelease) int { return strings.Compare(x.CID, y.CID) })
	if e.CID != "" {
		r.Releases = append(r.Releases, p2p.TrackedRelease{CID: e.CID, State: state})
	}
	if len(r.Releases) > p2p.MaxTrackedReleases {
		r.Releases = r.Releases[len(r.Releases)-p2p.MaxTrackedReleases:]
	}
	if want.Defined() {
		r.Want = want.String()
	}
	var ids []peer.ID
	for _, proxy := range a.upstreamIDs() {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := a.n.client.Track(rctx, proxy, r)
		cancel()
		if err != nil {
			a.log.Debug("agent: tracker failed", "proxy", proxy, "err", err)
			continue
		}
		for _, info := range res.Peers {
			a.n.Host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.TempAddrTTL)
			ids = append(ids, info.ID)
		}
		a.retryOrdered(res.Retry)
		break
	}
	return ids
}

// reportUp sends this agent's status upstream: a node's to its proxy, a
// proxy's site (and the sites below it) to its upstream.
func (a *agentState) reportUp() {
	switch a.n.cfg.Role {
	case RoleNode:
		a.report(a.ctx, manifest.IndexEntry{}, "", cid.Undef)
	case RoleProxy:
		r := &p2p.StatusReport{Sites: a.sitesBelow()}
		for _, up := range a.upstreamIDs() {
			ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
			ans, err := a.n.client.ReportStatus(ctx, up, r)
			cancel()
			if err != nil {
				a.log.Debug("agent: status report failed", "upstream", up, "err", err)
				continue
			}
			a.mu.Lock()
			a.retries = ans.Retry
			a.mu.Unlock()
			return
		}
	}
}

// sitesBelow returns a proxy's own site as its nodes reported it, and the
// sites the proxies below it reported; the origin has no site of its own.
func (a *agentState) sitesBelow() []p2p.SiteStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	var others []p2p.SiteStatus
	for name, s := range a.sites {
		if a.n.cfg.Role != RoleProxy || name != a.n.cfg.Site {
			others = append(others, s)
		}
	}
	slices.SortFunc(others, func(x, y p2p.SiteStatus) int { return strings.Compare(x.Site, y.Site) })
	var out []p2p.SiteStatus
	if a.n.cfg.Role == RoleProxy {
		own := p2p.SiteStatus{Site: a.n.cfg.Site, Proxy: a.n.Host.ID().String(), Nodes: []p2p.NodeStatus{}, Reported: a.now().UTC()}
		for name, st := range a.states {
			if st.State == p2p.StateHave {
				own.Replicated = append(own.Replicated, name)
			}
		}
		slices.Sort(own.Replicated)
		for _, m := range a.members {
			own.Nodes = append(own.Nodes, m.status)
		}
		slices.SortFunc(own.Nodes, func(x, y p2p.NodeStatus) int { return strings.Compare(x.ID, y.ID) })
		out = append(out, own)
	}
	out = append(out, others...)
	return out[:min(len(out), p2p.MaxStatusSites)]
}

// Track is a proxy's tracker: it records what a node of its site holds and
// its status, names up to maxSwarmPeers other site nodes that hold or fetch
// what it wants, and passes on the retries ordered for it. Nodes of other
// sites are not recorded and get no peers.
func (a *agentState) Track(_ context.Context, from peer.ID, r *p2p.TrackerReport) (p2p.TrackResult, error) {
	if r.Site != a.n.cfg.Site {
		return p2p.TrackResult{}, nil
	}
	a.mu.Lock()
	m := &member{releases: map[string]string{}, seen: a.now()}
	for _, rel := range r.Releases {
		m.releases[rel.CID] = rel.State
	}
	m.status = p2p.NodeStatus{ID: from.String(), Target: r.Target, Labels: r.Labels, Seen: m.seen.UTC(), Deployments: r.Deployments}
	prev := a.members[from]
	changed := prev == nil || !sameDeployments(prev.status.Deployments, r.Deployments)
	a.members[from] = m
	a.downstream[from] = true
	var candidates []peer.ID
	if r.Want != "" {
		for id, other := range a.members {
			if id != from && other.releases[r.Want] != "" {
				candidates = append(candidates, id)
			}
		}
	}
	var retry []p2p.RetryOrder
	for _, o := range a.retries {
		if o.Node == "" || o.Node == from.String() {
			retry = append(retry, o)
		}
	}
	a.mu.Unlock()
	if changed {
		// Kept so that a restarted proxy still knows its site.
		if err := a.db.put(bucketMembers, from.String(), m.status); err != nil {
			a.log.Warn("agent: keep node status", "node", from, "err", err)
		}
		a.changed()
	}
	candidates = swarmPeers(from, candidates, maxSwarmPeers)
	infos := make([]peer.AddrInfo, 0, len(candidates))
	for _, id := range candidates {
		infos = append(infos, peer.AddrInfo{ID: id, Addrs: a.n.Host.Peerstore().Addrs(id)})
	}
	a.updatePins()
	return p2p.TrackResult{Peers: infos, Retry: retry}, nil
}

// swarmPeers chooses up to n of candidates for node from to swarm with: those
// whose pair with from hashes lowest. The choice is stable, so a node asking
// again while it fetches is named the peers it already has instead of new
// ones to dial, and symmetric in the pair, so two nodes that chose each
// other share one connection: a site whose nodes were named fresh random
// peers every tracker period ended up dialling nearly every other node of
// the site, two connections a pair.
func swarmPeers(from peer.ID, candidates []peer.ID, n int) []peer.ID {
	score := func(other peer.ID) uint64 {
		x, y := string(from), string(other)
		if y < x {
			x, y = y, x
		}
		sum := sha256.Sum256([]byte(x + y))
		return binary.BigEndian.Uint64(sum[:8])
	}
	scores := make(map[peer.ID]uint64, len(candidates))
	for _, c := range candidates {
		scores[c] = score(c)
	}
	slices.SortFunc(candidates, func(a, b peer.ID) int { return cmp.Compare(scores[a], scores[b]) })
	return candidates[:min(len(candidates), n)]
}

func sameDeployments(x, y []p2p.DeploymentStatus) bool {
	// Byte counts move all the time while downloading; the state is what
	// is worth a write and a report upstream.
	return slices.EqualFunc(x, y, func(a, b p2p.DeploymentStatus) bool {
		return a.Release == b.Release && a.State == b.State && a.Reason == b.Reason && a.Have == b.Have
	})
}

// Status takes a status report from a proxy below: its sites replace what
// was known of them. The answer carries the retries ordered at the origin
// (or, on a proxy, those its upstream passed down).
func (a *agentState) Status(_ context.Context, from peer.ID, r *p2p.StatusReport) (*p2p.StatusAnswer, error) {
	a.mu.Lock()
	for _, s := range r.Sites {
		if s.Site == a.n.cfg.Site && a.n.cfg.Role == RoleProxy {
			continue // a proxy knows its own site first hand
		}
		a.sites[s.Site] = s
	}
	a.downstream[from] = true
	retry := slices.Clone(a.retries)
	a.mu.Unlock()
	for _, s := range r.Sites {
		if err := a.db.put(bucketSites, s.Site, s); err != nil {
			a.log.Warn("agent: keep site status", "site", s.Site, "err", err)
		}
	}
	if a.n.cfg.Role == RoleProxy {
		a.changed()
	}
	return &p2p.StatusAnswer{Retry: retry}, nil
}

// loadFleet reads what a proxy or the origin knew of the sites and nodes
// below it, and the retries ordered.
func (a *agentState) loadFleet() error {
	if a.n.cfg.Role == RoleNode {
		return nil
	}
	err := a.db.each(bucketSites, func(name string, v []byte) error {
		var s p2p.SiteStatus
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		a.sites[name] = s
		return nil
	})
	if err != nil {
		return err
	}
	err = a.db.each(bucketMembers, func(id string, v []byte) error {
		p, err := peer.Decode(id)
		if err != nil {
			return nil
		}
		var st p2p.NodeStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return err
		}
		a.members[p] = &member{releases: map[string]string{}, seen: st.Seen, status: st}
		return nil
	})
	if err != nil || a.n.cfg.Role != RoleOrigin {
		return err
	}
	return a.db.each(bucketRetries, func(_ string, v []byte) error {
		var orders []p2p.RetryOrder
		if err := json.Unmarshal(v, &orders); err != nil {
			return err
		}
		a.retries = append(a.retries, orders...)
		return nil
	})
}

// maxRetriesKept bounds the retry orders the origin keeps per release.
const maxRetriesKept = 16

// Retry orders, at the origin, the failed installs of release to run
// again: on every node, or on node only. It returns the order's generation.
func (n *Node) Retry(release, node string) (uint64, error) {
	a := n.agent
	if a == nil || n.cfg.Role != RoleOrigin {
		return 0, errOriginOnly
	}
	if _, err := manifest.ParsePackName(release); err != nil {
		return 0, err
	}
	if node != "" {
		if _, err := peer.Decode(node); err != nil {
			return 0, err
		}
	}
	a.mu.Lock()
	var gen uint64
	var mine []p2p.RetryOrder
	for _, o := range a.retries {
		if o.Release == release {
			gen = max(gen, o.Generation)
			mine = append(mine, o)
		}
	}
	order := p2p.RetryOrder{Release: release, Node: node, Generation: gen + 1}
	mine = append(mine, order)
	mine = mine[max(0, len(mine)-maxRetriesKept):]
	a.retries = slices.DeleteFunc(a.retries, func(o p2p.RetryOrder) bool { return o.Release == release })
	a.retries = append(a.retries, mine...)
	if over := len(a.retries) - p2p.MaxRetryOrders; over > 0 {
		a.retries = a.retries[over:]
	}
	a.mu.Unlock()
	if err := a.db.put(bucketRetries, release, mine); err != nil {
		return 0, err
	}
	a.log.Info("agent: retry ordered", "release", release, "node", node, "generation", order.Generation)
	return order.Generation, nil
}
