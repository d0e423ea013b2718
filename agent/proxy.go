package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// proxy is a site's cache: it replicates the releases deployed to its site
// over the WAN once (sharing the work with its sibling proxies), serves them
// to the site through its cache, tracks which site nodes hold what, and
// reports its site, and the sites below it, up the tree.
type proxy struct {
	*core
	up       *follower
	conf     ProxyConfig
	siblings []peer.ID
	wan      *p2p.RateLimiter
	cache    *store.Cache
	work     *workers
	members  *members
	sites    *siteBook

	indexService   *p2p.IndexService
	trackerService *fleet.TrackerService
	statusService  *fleet.StatusService
	nudgeService   *fleet.NudgeService
	rootService    *p2p.RootService

	mu       sync.Mutex
	replicas map[string]*replica // by release name
	// wanted counts, per chunk, the releases deployed to the site whose
	// manifests hold it: only those chunks are fetched upstream when the
	// cache misses, so that no peer can make the proxy fetch over the WAN
	// what its site was never meant to have.
	wanted map[cid.Cid]int
	// claimed counts, per chunk, the releases held whole: the proxy
	// answers that it has them, evicted or not, since its cache gets them
	// again on demand.
	claimed map[cid.Cid]int
	retries []fleet.RetryOrder // ordered upstream, passed down
}

// replica is a proxy's progress on one release.
type replica struct {
	cid     string
	state   string // fleet.StateFetching, fleet.StateHave or replicaFailed
	err     string
	chunks  []cid.Cid // once the manifest is known
	wanted  bool      // chunks counted in proxy.wanted
	claimed bool      // chunks counted in proxy.claimed
}

// replicaFailed is the state of a replica whose last attempt failed.
const replicaFailed = "failed"

// fetchIdle ends an agent's fetch whose peers have gone quiet, so that it
// starts again soon with the peers of the moment (a restarted proxy, new
// site peers) instead of waiting on the old ones.
const fetchIdle = 10 * time.Second

// siblingDialTimeout bounds one dial of a sibling proxy.
const siblingDialTimeout = 10 * time.Second

func newProxy(ctx context.Context, c *core, cfg ProxyConfig) (*proxy, error) {
	p := &proxy{
		core: c, up: newFollower(c, cfg.Upstreams), conf: cfg,
		wan:      p2p.NewRateLimiter(cfg.WANRate),
		work:     newWorkers(c),
		replicas: map[string]*replica{},
		wanted:   map[cid.Cid]int{},
		claimed:  map[cid.Cid]int{},
	}
	ps := c.peer.Host.Peerstore()
	for _, info := range cfg.Siblings {
		ps.AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		p.siblings = append(p.siblings, info.ID)
	}
	upstream := p2p.NewUpstream(&p2p.Client{Host: c.peer.Host, Limiter: p.wan}, p.up.ids...)
	cache, err := store.NewCache(ctx, c.peer.Store, wantedOnly{p: p, up: upstream}, cfg.CacheQuota)
	if err != nil {
		return nil, err
	}
	p.cache = cache
	if p.members, err = loadMembers(c.db, c.log, time.Duration(cfg.OfflineAfter)*c.cfg.PollInterval); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	if p.sites, err = newSiteBook(c, cfg.Site, p.retryOrders); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	// Releases replicated whole before a restart are held again (what was
	// evicted since comes back through the cache) and not replicated
	// again, which would pin them anew although the site may be done with
	// them. The first poll unwants what is no longer deployed here.
	rels, bad, err := c.peer.Catalog.List()
	if err != nil {
		return nil, err
	}
	for _, u := range bad {
		c.log.Warn("agent: a release of the catalog is unreadable; it is not served (patchctl rm removes it)", "release", u.Name, "err", u.Err)
	}
	for _, r := range rels {
		rp := &replica{cid: r.CID.String(), state: fleet.StateHave, chunks: r.Manifest.ChunkIDs()}
		p.replicas[r.Name] = rp
		p.want(rp)
		p.claim(rp)
	}
	return p, nil
}

func (p *proxy) start(context.Context) error {
	p.peer.Serve(Serving{Frames: p.cache, Has: p})
	h := p.peer.Host
	p.indexService = p2p.NewIndexService(h, p.core, p.up, p2p.IndexConfig{Logger: p.log})
	p.trackerService = fleet.NewTrackerService(h, p, p.log)
	p.statusService = fleet.NewStatusService(h, p.sites, p.log)
	p.nudgeService = fleet.NewNudgeService(h, p.up.Nudged, p.log)
	p.rootService = p2p.NewRootService(h, p.trust, p.log)
	if len(p.siblings) > 0 {
		p.tasks.Go(p.keepSiblings)
	}
	return nil
}

func (p *proxy) stop() {
	p.indexService.Close()
	p.trackerService.Close()
	p.statusService.Close()
	p.nudgeService.Close()
	p.rootService.Close()
}

func (p *proxy) poll(ctx context.Context) bool {
	answered, _ := p.up.pull(ctx)
	p.reconcile(ctx)
	return answered
}

// keepSiblings keeps a connection open to every sibling proxy, as polling
// keeps one to the upstream, so that a release starts trading between
// siblings at once instead of after handshakes queued behind the site's
// nodes (docs/decisions/0003).
func (p *proxy) keepSiblings(ctx context.Context) {
	h := p.peer.Host
	for _, id := range p.siblings {
		h.ConnManager().Protect(id, "patchctl-sibling")
	}
	t := p.clock.Ticker(p.core.cfg.PollInterval)
	defer t.Stop()
	for {
		for _, id := range p.siblings {
			if h.Network().Connectedness(id) == network.Connected {
				continue
			}
			dctx, cancel := context.WithTimeout(ctx, siblingDialTimeout)
			if err := h.Connect(dctx, peer.AddrInfo{ID: id}); ctx.Err() == nil {
				p.outage("dialling sibling "+id.ShortString(), err, "sibling", id)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reconcile starts replicating every release deployed to the site that is
// not held whole, stops wanting those no longer deployed here, and settles
// the pins.
func (p *proxy) reconcile(ctx context.Context) {
	ix := p.usable()
	if ix == nil {
		return
	}
	deployed := map[string]manifest.IndexEntry{}
	for _, e := range ix.Releases {
		if lifecycle.DeployedToSite(ix, e, p.conf.Site) {
			deployed[e.Name] = e
		}
	}
	var todo []manifest.IndexEntry
	p.mu.Lock()
	for name, r := range p.replicas {
		switch e, ok := deployed[name]; {
		case !ok:
			// Withdrawn from the site: nothing of it is fetched or
			// claimed any more, and updatePins unpins it.
			p.unwant(r)
			p.unclaim(r)
			delete(p.replicas, name)
		case e.CID != r.cid:
			p.unwant(r) // a new version replaces it
		}
	}
	for _, e := range deployed {
		if r := p.replicas[e.Name]; r != nil && r.cid == e.CID && r.state == fleet.StateHave {
			p.want(r)
			continue
		}
		todo = append(todo, e)
	}
	p.mu.Unlock()
	for _, e := range todo {
		p.work.start(e.Name, func(ctx context.Context) error { return p.replicate(ctx, e) },
			func(err error, backoff time.Duration) {
				p.setReplica(e, replicaFailed, err)
				p.log.Warn("agent: replication failed; retrying", "release", e.Name, "in", backoff, "err", err)
			}, p.reconcile)
	}
	p.updatePins(ctx)
}

// setReplica records e's state; a new version of the name replaces the
// replica of the old one.
func (p *proxy) setReplica(e manifest.IndexEntry, state string, err error) *replica {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.replicas[e.Name]
	if r == nil || r.cid != e.CID {
		if r != nil {
			p.unwant(r)
			p.unclaim(r)
		}
		r = &replica{cid: e.CID}
		p.replicas[e.Name] = r
	}
	r.state, r.err = state, ""
	if err != nil {
		r.err = err.Error()
	}
	return r
}

// replicate brings a release to the proxy: from sibling proxies where they
// have the chunks, from the upstreams where none does, each chunk once over
// the WAN. The release is pinned from the start, so the cache never evicts
// what the site still needs.
func (p *proxy) replicate(ctx context.Context, e manifest.IndexEntry) error {
	p.setReplica(e, fleet.StateFetching, nil)
	// The envelope from the upstreams first: they have it, while siblings
	// may be waiting for it themselves.
	env, m, id, err := p.envelopeFor(ctx, e, append(slices.Clone(p.up.ids), p.siblings...))
	if err != nil {
		return err
	}
	ids := m.ChunkIDs()
	p.mu.Lock()
	r := p.replicas[e.Name]
	r.chunks = ids
	p.want(r)
	p.mu.Unlock()
	if err := p.peer.Store.Pin(ctx, m.Name, ids); err != nil {
		return err
	}
	// Proxies of sibling sites split the release: each gets its own part
	// over the WAN from the upstreams, and the others' parts from them.
	group := append([]peer.ID{p.peer.Host.ID()}, p.siblings...)
	slices.Sort(group)
	opts := FetchOptions{Swarm: p2p.FetchConfig{
		Costly:      func(id peer.ID) bool { return p.up.is[id] },
		Share:       group,
		NoEndgame:   true,
		Limiter:     p.wan,
		IdleTimeout: fetchIdle,
	}}
	peers := append(slices.Clone(p.siblings), p.up.ids...)
	sum, err := p.peer.fetchRelease(ctx, env, m, id, peers, p.cache, opts, p.clock.Now())
	if err != nil {
		return err
	}
	p.mu.Lock()
	r.state = fleet.StateHave
	p.claim(r)
	p.mu.Unlock()
	p.log.Info("agent: release replicated", "release", m.Name, "chunks", sum.ChunksFetched, "bytes", sum.BytesFetched, "seconds", sum.Seconds, "peer_bytes", sum.Peers)
	p.changed()
	p.updatePins(ctx)
	return nil
}

// want, unwant, claim and unclaim count a replica's chunks in or out of
// wanted and claimed; p.mu is held.
func (p *proxy) want(r *replica) {
	if !r.wanted && r.chunks != nil {
		r.wanted = true
		for _, id := range r.chunks {
			p.wanted[id]++
		}
	}
}

func (p *proxy) unwant(r *replica) {
	if r.wanted {
		r.wanted = false
		uncount(p.wanted, r.chunks)
	}
}

func (p *proxy) claim(r *replica) {
	if !r.claimed && r.chunks != nil {
		r.claimed = true
		for _, id := range r.chunks {
			p.claimed[id]++
		}
	}
}

func (p *proxy) unclaim(r *replica) {
	if r.claimed {
		r.claimed = false
		uncount(p.claimed, r.chunks)
	}
}

func uncount(m map[cid.Cid]int, ids []cid.Cid) {
	for _, id := range ids {
		if m[id]--; m[id] <= 0 {
			delete(m, id)
		}
	}
}

// wants reports whether a chunk belongs to a release deployed to the site.
func (p *proxy) wants(id cid.Cid) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wanted[id] > 0
}

// wantedOnly is the upstream of a proxy's cache: it fetches over the WAN
// only chunks of releases deployed to the site.
type wantedOnly struct {
	p  *proxy
	up store.FrameGetter
}

func (w wantedOnly) GetFrame(ctx context.Context, id cid.Cid) ([]byte, error) {
	if !w.p.wants(id) {
		return nil, fmt.Errorf("chunk %s belongs to no release deployed to this site: %w", id, store.ErrNotFound)
	}
	return w.up.GetFrame(ctx, id)
}

// Has is a proxy's answer to the have protocol: what it holds, and every
// chunk of a release it holds whole, which its cache gets again on demand.
func (p *proxy) Has(ctx context.Context, id cid.Cid) (bool, error) {
	p.mu.Lock()
	claimed := p.claimed[id] > 0
	p.mu.Unlock()
	if claimed {
		return true, nil
	}
	return p.peer.Store.Has(ctx, id)
}

// updatePins unpins the releases the site no longer needs the proxy to
// keep, and lets the cache evict their chunks: a release no longer deployed
// to the site (withdrawn) or superseded there by a newer service pack, and
// one every online node it targets is done with (installed, retired or
// refused). Offline nodes hold nothing pinned; with no node online, nothing
// is known and releases stay pinned.
func (p *proxy) updatePins(ctx context.Context) {
	ix := p.current()
	if ix == nil {
		return
	}
	pins, err := p.pinsOf(ctx)
	if err != nil {
		p.log.Warn("agent: read pins", "err", err)
		return
	}
	nodes := p.members.view(p.clock.Now())
	var drop []string
	p.mu.Lock()
	for name := range pins {
		r := p.replicas[name]
		e, ok := ix.Lookup(name)
		switch {
		case !ok || !lifecycle.DeployedToSite(ix, e, p.conf.Site) || r == nil:
			drop = append(drop, name)
		case r.state != fleet.StateHave:
		case supersededAt(ix, e, p.conf.Site) || doneWith(ix, e, p.conf.Site, nodes):
			drop = append(drop, name)
		}
	}
	p.mu.Unlock()
	unpinned := false
	for _, name := range drop {
		if err := p.peer.Store.Unpin(ctx, name); err != nil {
			p.log.Warn("agent: unpin", "release", name, "err", err)
			continue
		}
		p.log.Info("agent: release unpinned; the cache may evict it", "release", name)
		unpinned = true
	}
	if unpinned {
		if err := p.cache.Evict(ctx); err != nil {
			p.log.Warn("agent: evict", "err", err)
		}
	}
}

// supersededAt reports whether a service pack of ix deployed to site
// retires e when it installs.
func supersededAt(ix *manifest.Index, e manifest.IndexEntry, site string) bool {
	for _, o := range ix.Releases {
		if lifecycle.Supersedes(o.Name, e.Name) && lifecycle.DeployedToSite(ix, o, site) {
			return true
		}
	}
	return false
}

// Track is the site's tracker: it records what a node of the site holds
// and how its deployments stand, names up to maxSwarmPeers other online
// site nodes that hold or fetch what it wants, and passes on the retries
// ordered for it. Nodes of other sites are not recorded and get nothing.
func (p *proxy) Track(ctx context.Context, from peer.ID, r *fleet.TrackerReport) (fleet.TrackResult, error) {
	if r.Site != p.conf.Site {
		return fleet.TrackResult{}, nil
	}
	now := p.clock.Now()
	changed, ok := p.members.record(from, r, now)
	if !ok {
		return fleet.TrackResult{}, nil
	}
	ps := p.peer.Host.Peerstore()
	var infos []peer.AddrInfo
	for _, id := range p.members.holders(from, r.Want, now) {
		infos = append(infos, peer.AddrInfo{ID: id, Addrs: ps.Addrs(id)})
	}
	var retry []fleet.RetryOrder
	p.mu.Lock()
	for _, o := range p.retries {
		if o.Node == "" || o.Node == from.String() {
			retry = append(retry, o)
		}
	}
	p.mu.Unlock()
	if changed {
		p.changed()
		p.updatePins(ctx)
	}
	return fleet.TrackResult{Peers: infos, Retry: retry}, nil
}

// retryOrders returns the retries the upstream passed down.
func (p *proxy) retryOrders() []fleet.RetryOrder {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.retries)
}

// site is the proxy's own site as its nodes reported it.
func (p *proxy) site() fleet.SiteStatus {
	now := p.clock.Now()
	s := fleet.SiteStatus{Site: p.conf.Site, Proxy: p.peer.Host.ID().String(), Nodes: p.members.view(now), Reported: now.UTC()}
	p.mu.Lock()
	for name, r := range p.replicas {
		if r.state == fleet.StateHave {
			s.Replicated = append(s.Replicated, name)
		}
	}
	p.mu.Unlock()
	slices.Sort(s.Replicated)
	return s
}

// mendFrom: the upstreams, and the sibling proxies.
func (p *proxy) mendFrom() []peer.ID { return append(slices.Clone(p.up.ids), p.siblings...) }

// reportUp sends the proxy's site, and the sites below it, to its upstream,
// and takes the retries the answer orders.
func (p *proxy) reportUp(ctx context.Context) {
	sites := append([]fleet.SiteStatus{p.site()}, p.sites.below()...)
	r := &fleet.StatusReport{Sites: sites[:min(len(sites), fleet.MaxStatusSites)]}
	client := fleet.NewClient(p.peer.client)
	var errs []error
	defer func() {
		if ctx.Err() == nil {
			p.outage("reporting status upstream", errors.Join(errs...), "upstreams", p.up.ids)
		}
	}()
	for _, up := range p.up.ids {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		ans, err := client.ReportStatus(rctx, up, r)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = nil
		p.mu.Lock()
		fresh := !slices.Equal(p.retries, ans.Retry) && len(ans.Retry) > 0
		p.retries = ans.Retry
		p.mu.Unlock()
		if fresh {
			// The nodes hear of new retries at their next report: now.
			p.nudgeDownstream()
		}
		return
	}
}

func (p *proxy) Health(context.Context) (adminapi.Health, error) {
	h := p.health()
	h.Site = p.conf.Site
	return h, nil
}

func (p *proxy) Index(context.Context) ([]byte, error) { return p.indexEnvelope() }

// FleetStatus is the view of the proxy's site and the sites below it.
func (p *proxy) FleetStatus(_ context.Context, release string) (adminapi.FleetStatus, error) {
	sites := append([]fleet.SiteStatus{p.site()}, p.sites.below()...)
	st, err := fleetStatus(p.current(), sites, release, p.clock.Now())
	st.Unenrolled = p.sites.unenrolled()
	return st, err
}
