package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// Role is what a node does in the tree of sites.
type Role string

const (
	// RoleOrigin holds every published release and the signed index; it
	// is the root of the tree.
	RoleOrigin Role = "origin"
	// RoleProxy is a site's cache: it replicates the releases meant for
	// its site over the WAN once, serves them to the site and tracks which
	// site peers hold what. It never installs.
	RoleProxy Role = "proxy"
	// RoleNode is a client, server or appliance: it fetches from its site's
	// peers and proxy, verifies, installs and reports.
	RoleNode Role = "node"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleOrigin, RoleProxy, RoleNode:
		return r, nil
	}
	return "", fmt.Errorf("role %q: want origin, proxy or node", s)
}

// AgentConfig makes a node an agent that learns of releases by itself.
type AgentConfig struct {
	// Root is the trust root that releases and the index must be signed
	// by; nil leaves the node a plain server.
	Root *manifest.Root
	Role Role
	// Site names the node's site; releases of the index that name sites
	// are fetched only by those sites.
	Site string
	// Upstreams are where the node polls for the index and gets releases:
	// for a node its site's proxy, for a proxy the origin or a parent
	// proxy. Not used by the origin.
	Upstreams []peer.AddrInfo
	// Siblings are proxies of other sites a proxy may share chunks with,
	// so that the origin need not send a copy per site.
	Siblings []peer.AddrInfo
	// WANRate caps a proxy's downloads from upstreams and siblings, in
	// bytes/s; 0 is unlimited.
	WANRate int
	// CacheQuota bounds a proxy's stored chunks in bytes (0: no bound).
	// Chunks of releases meant for the site that not every site node has
	// installed are pinned and never evicted.
	CacheQuota int64
	// PollInterval is how often the node asks its upstreams for a newer
	// index, and retries failed work (default 1 min).
	PollInterval time.Duration
	// MDNS finds peers of the same site on the LAN by multicast DNS, beside
	// those the site's tracker names. It needs a multicast-capable
	// interface.
	MDNS bool
	// NoSwarm makes a node fetch from its upstreams only, never from site
	// peers: the baseline a swarm is measured against.
	NoSwarm bool
	// HookTimeout bounds an install hook (default 10 min).
	HookTimeout time.Duration
	// Target says which packs apply to a node: "client" or "server" (the
	// C or S of a pack's name); generic packages apply to both.
	Target string
	// Labels are the node's labels, for deployments' selectors.
	Labels map[string]string
	// InstallHook is the node's install command, run with /bin/sh -c in
	// the release's directory after its files are in place.
	InstallHook string
	// AllowReleaseCommands lets a node run the install command a release
	// carries (signed with it); without it such a release fails to install.
	AllowReleaseCommands bool
	// Logger receives the agent's log; nil discards.
	Logger *slog.Logger
	// Now is the clock signatures are checked at; nil is time.Now.
	Now func() time.Time
}

func (c *AgentConfig) validate() error {
	if c.Root == nil {
		return nil
	}
	if _, err := ParseRole(string(c.Role)); err != nil {
		return err
	}
	switch c.Target {
	case "", "client", "server":
	default:
		return fmt.Errorf("target %q: want client or server", c.Target)
	}
	for k, v := range c.Labels {
		if _, _, err := ParseLabel(k + "=" + v); err != nil {
			return err
		}
	}
	if c.Role != RoleOrigin {
		if err := manifest.ValidateSite(c.Site); err != nil {
			return err
		}
		if len(c.Upstreams) == 0 {
			return fmt.Errorf("a %s needs at least one upstream", c.Role)
		}
	}
	return nil
}

// IndexFile is where, under its data dir, an agent keeps the signed index it
// follows. An origin that is running adopts a newer one written there (by
// `patchctl index add`) at its next poll.
const IndexFile = indexFile

// SaveIndex writes a signed index envelope to dataDir's IndexFile,
// atomically. It does not verify it; the agents that take it do.
func SaveIndex(dataDir string, env []byte) error {
	return writeFileAtomic(filepath.Join(dataDir, indexFile), env, 0o644)
}

// Files of an agent's state under its data dir.
const (
	indexFile    = "index.envelope"
	installedDir = "installed"
	retiredDir   = "retired"
	logsDir      = "logs"
	defaultPoll  = time.Minute
	// A node fetching a release asks its tracker for site peers every
	// trackerPeriod, and half as often after each answer that names none
	// it has not been given, down to every maxTrackerPeriod. Each ask also
	// reports the node's progress to its proxy.
	trackerPeriod    = 2 * time.Second
	maxTrackerPeriod = 16 * time.Second
)

// agentState is what an agent keeps beside the node's serving state.
type agentState struct {
	n      *Node
	log    *slog.Logger
	now    func() time.Time
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	db        *stateDB
	installMu sync.Mutex    // one install at a time
	dirty     chan struct{} // a state changed: report soon
	upstreams map[peer.ID]bool
	wan       *p2p.RateLimiter
	cache     *store.Cache // proxies only
	index     *p2p.IndexService
	tracker   *p2p.TrackerService
	status    *p2p.StatusService
	announced chan peer.ID

	mu         sync.Mutex
	held       *manifest.Index
	heldEnv    []byte
	downstream map[peer.ID]bool
	members    map[peer.ID]*member     // proxies: site nodes that reported
	claimed    map[cid.Cid]int         // proxies: chunks of releases held whole, evicted or not
	working    map[string]bool         // release names being worked on
	attempts   map[string]int          // failed attempts in a row, by release name
	states     map[string]ReleaseState // by release name
	lanPeers   map[peer.ID]bool        // site peers found by mDNS
	mdns       io.Closer

	lifecycle map[string]*p2p.DeploymentStatus // nodes: by release name
	progress  map[string]releaseProgress       // nodes: what outlasts a restart
	sites     map[string]p2p.SiteStatus        // proxies and origin: the sites below
	retries   []p2p.RetryOrder                 // proxies: ordered upstream; origin: ordered here
}

// member is a site node as its tracker knows it.
type member struct {
	releases map[string]string // manifest CID → state
	seen     time.Time
	status   p2p.NodeStatus
}

// StateFailed is the state of a release whose last attempt failed; the agent
// retries it.
const StateFailed = "failed"

// ReleaseState is an agent's progress on one release of its index.
type ReleaseState struct {
	Name  string `json:"name"`
	CID   string `json:"cid"`
	State string `json:"state"` // fetching, have (proxies: replicated), installed, failed
	Error string `json:"error,omitempty"`
}

// States returns the agent's progress on the releases of its index, sorted
// by name.
func (n *Node) States() []ReleaseState {
	if n.agent == nil {
		return nil
	}
	a := n.agent
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]ReleaseState, 0, len(a.states))
	for _, s := range a.states {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y ReleaseState) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func (n *Node) startAgent(ctx context.Context) error {
	cfg := &n.cfg.AgentConfig
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("role", cfg.Role, "site", cfg.Site, "peer", n.Host.ID().ShortString())
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	actx, cancel := context.WithCancel(context.Background())
	a := &agentState{
		n: n, log: log, now: now, ctx: actx, cancel: cancel,
		upstreams:  map[peer.ID]bool{},
		wan:        p2p.NewRateLimiter(cfg.WANRate),
		announced:  make(chan peer.ID, 16),
		downstream: map[peer.ID]bool{},
		members:    map[peer.ID]*member{},
		claimed:    map[cid.Cid]int{},
		working:    map[string]bool{},
		attempts:   map[string]int{},
		states:     map[string]ReleaseState{},
		lanPeers:   map[peer.ID]bool{},
		dirty:      make(chan struct{}, 1),
		lifecycle:  map[string]*p2p.DeploymentStatus{},
		progress:   map[string]releaseProgress{},
		sites:      map[string]p2p.SiteStatus{},
	}
	db, err := openStateDB(n.cfg.DataDir)
	if err != nil {
		cancel()
		return err
	}
	a.db = db
	fail := func(err error) error {
		cancel()
		db.Close()
		return err
	}
	ps := n.Host.Peerstore()
	for _, info := range cfg.Upstreams {
		ps.AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		a.upstreams[info.ID] = true
	}
	for _, info := range cfg.Siblings {
		ps.AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
	}
	if cfg.Role == RoleProxy {
		upstream := p2p.NewUpstream(&p2p.Client{Host: n.Host, Limiter: a.wan}, a.upstreamIDs()...)
		c, err := store.NewCache(ctx, n.Store, upstream, cfg.CacheQuota)
		if err != nil {
			return fail(err)
		}
		a.cache = c
		// Releases replicated whole before a restart are claimed again
		// (what was evicted since comes back through the cache) and not
		// replicated again, which would pin them anew although the site
		// may have installed them.
		rels, err := n.Catalog.List()
		if err != nil {
			return fail(err)
		}
		for _, r := range rels {
			a.claim(r.Manifest.ChunkIDs())
			a.states[r.Name] = ReleaseState{Name: r.Name, CID: r.CID.String(), State: p2p.StateHave}
		}
	}
	if err := a.loadIndex(); err != nil {
		log.Warn("agent: held index not usable; starting without one", "err", err)
	}
	if err := a.loadLifecycle(); err != nil {
		return fail(fmt.Errorf("load state: %w", err))
	}
	if err := a.loadFleet(); err != nil {
		return fail(fmt.Errorf("load state: %w", err))
	}
	n.agent = a
	return nil
}

// runAgent starts the services and the loop, once the node serves.
func (n *Node) runAgent() {
	a := n.agent
	var ann p2p.Announcements
	if n.cfg.Role != RoleOrigin {
		ann = a
	}
	a.index = p2p.NewIndexService(n.Host, a, ann, p2p.IndexConfig{Logger: n.cfg.Logger})
	if n.cfg.Role == RoleProxy {
		a.tracker = p2p.NewTrackerService(n.Host, a, n.cfg.Logger)
	}
	if n.cfg.Role != RoleNode {
		a.status = p2p.NewStatusService(n.Host, a, n.cfg.Logger)
	}
	if n.cfg.MDNS && n.cfg.Site != "" {
		// The service name carries the site, so only peers of the
		// same site answer.
		svc := mdns.NewMdnsService(n.Host, "patchctl-"+n.cfg.Site, a)
		if err := svc.Start(); err != nil {
			a.log.Warn("agent: mDNS not started", "err", err)
		} else {
			a.mdns = svc
		}
	}
	a.wg.Add(1)
	go a.loop()
	if n.cfg.Role == RoleProxy && len(n.cfg.Siblings) > 0 {
		a.wg.Add(1)
		go a.keepSiblings()
	}
}

// keepSiblings keeps a connection open to every sibling proxy, as polling
// keeps one to the upstream, so that a release starts trading between
// siblings at once. Dialled only when a release arrives, the sibling
// handshakes queued behind those of the site's nodes starting their own
// fetches: in a 500-node testnet the siblings' have subscriptions opened 3
// to 11 s after the upstream's, while the proxies' WAN links idled.
func (a *agentState) keepSiblings() {
	defer a.wg.Done()
	h := a.n.Host
	for _, info := range a.n.cfg.Siblings {
		h.ConnManager().Protect(info.ID, "patchctl-sibling")
	}
	t := time.NewTicker(a.pollInterval())
	defer t.Stop()
	for {
		for _, info := range a.n.cfg.Siblings {
			if h.Network().Connectedness(info.ID) == network.Connected {
				continue
			}
			ctx, cancel := context.WithTimeout(a.ctx, siblingDialTimeout)
			if err := h.Connect(ctx, info); err != nil && a.ctx.Err() == nil {
				a.log.Debug("agent: sibling not reachable", "sibling", info.ID, "err", err)
			}
			cancel()
		}
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// siblingDialTimeout bounds one dial of a sibling proxy.
const siblingDialTimeout = 10 * time.Second

// HandlePeerFound takes a site peer found by mDNS.
func (a *agentState) HandlePeerFound(info peer.AddrInfo) {
	if info.ID == a.n.Host.ID() {
		return
	}
	a.n.Host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.TempAddrTTL)
	a.mu.Lock()
	a.lanPeers[info.ID] = true
	a.mu.Unlock()
}

// sitePeers returns the site peers found by mDNS.
func (a *agentState) sitePeers() []peer.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]peer.ID, 0, len(a.lanPeers))
	for id := range a.lanPeers {
		ids = append(ids, id)
	}
	return ids
}

func (a *agentState) stop() {
	a.cancel()
	if a.mdns != nil {
		a.mdns.Close()
	}
	// Whoever adds to wg does so holding mu after checking ctx: past
	// this, nobody adds, and Wait is safe.
	a.mu.Lock()
	a.mu.Unlock() //nolint:staticcheck // an empty critical section is the barrier

	if a.index != nil {
		a.index.Close()
	}
	if a.tracker != nil {
		a.tracker.Close()
	}
	if a.status != nil {
		a.status.Close()
	}
	a.wg.Wait()
	a.db.Close()
}

func (a *agentState) upstreamIDs() []peer.ID {
	ids := make([]peer.ID, 0, len(a.n.cfg.Upstreams))
	for _, info := range a.n.cfg.Upstreams {
		ids = append(ids, info.ID)
	}
	return ids
}

func (a *agentState) pollInterval() time.Duration {
	if a.n.cfg.PollInterval <= 0 {
		return defaultPoll
	}
	return a.n.cfg.PollInterval
}

// loop polls the upstreams, follows announcements and retries failed work
// until the agent stops.
func (a *agentState) loop() {
	defer a.wg.Done()
	poll := time.NewTicker(a.pollInterval())
	defer poll.Stop()
	a.pollUpstreams()
	a.reconcile()
	a.reportUp()
	// Reports of changes go at most once a second, however many change.
	var soon <-chan time.Time
	for {
		select {
		case <-a.ctx.Done():
			return
		case from := <-a.announced:
			a.pull(from)
		case <-a.dirty:
			if soon == nil {
				soon = time.After(time.Second)
			}
		case <-soon:
			soon = nil
			a.reportUp()
		case <-poll.C:
			a.pollUpstreams()
			a.reconcile()
			a.reportUp()
		}
	}
}

// Announced takes an announcement: a newer index is pulled from its sender,
// which must be an upstream, so that no peer can make this node fetch at
// its bidding.
func (a *agentState) Announced(from peer.ID, version uint64) {
	if !a.upstreams[from] {
		return
	}
	a.mu.Lock()
	newer := a.held == nil || version > a.held.Version
	a.mu.Unlock()
	if !newer {
		return
	}
	select {
	case a.announced <- from:
	default: // a pull is already queued
	}
}

// Index serves the held index, and remembers the asker as a peer to push
// announcements to.
func (a *agentState) Index(_ context.Context, from peer.ID) (uint64, []byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.upstreams[from] {
		a.downstream[from] = true
	}
	if a.held == nil {
		return 0, nil, nil
	}
	return a.held.Version, a.heldEnv, nil
}

func (a *agentState) pollUpstreams() {
	if a.n.cfg.Role == RoleOrigin {
		a.reloadIndex()
		return
	}
	for _, p := range a.upstreamIDs() {
		if a.pull(p) {
			return
		}
	}
}

// pull gets a newer index from p if it has one and adopts it; it reports
// whether p answered.
func (a *agentState) pull(p peer.ID) bool {
	ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
	defer cancel()
	a.mu.Lock()
	var version uint64
	if a.held != nil {
		version = a.held.Version
	}
	a.mu.Unlock()
	env, err := a.n.client.GetIndex(ctx, p, version)
	if errors.Is(err, p2p.ErrNotFound) {
		return true
	}
	if err != nil {
		a.log.Debug("agent: poll failed", "upstream", p, "err", err)
		return false
	}
	if err := a.adopt(env); err != nil {
		a.log.Warn("agent: index refused", "upstream", p, "err", err)
		return false
	}
	a.reconcile()
	return true
}

// SetIndex makes env, a signed index, the one this node serves and acts on,
// and announces it to the peers that polled this node. The origin is given
// its index this way.
func (n *Node) SetIndex(env []byte) error {
	if n.agent == nil {
		return errors.New("set index: the node has no trust root")
	}
	if err := n.agent.adopt(env); err != nil {
		return err
	}
	n.agent.reconcile()
	return nil
}

// adopt verifies env against the trust root and the held index (rollback),
// keeps it on disk and announces it downstream.
func (a *agentState) adopt(env []byte) error {
	a.mu.Lock()
	held := a.held
	a.mu.Unlock()
	ix, err := a.n.cfg.Root.VerifyIndex(env, a.now(), held)
	if err != nil {
		return err
	}
	if held != nil && ix.Version == held.Version {
		return nil
	}
	if err := writeFileAtomic(filepath.Join(a.n.cfg.DataDir, indexFile), env, 0o644); err != nil {
		return fmt.Errorf("keep index: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.held, a.heldEnv = ix, env
	a.log.Info("agent: index adopted", "version", ix.Version, "releases", len(ix.Releases))
	if a.ctx.Err() != nil {
		return nil
	}
	for p := range a.downstream {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
			defer cancel()
			if err := a.n.client.Announce(ctx, p, ix.Version); err != nil {
				// It polls, and will catch up then.
				a.log.Debug("agent: announce failed", "peer", p, "err", err)
			}
		}()
	}
	return nil
}

// reloadIndex adopts the index file of the data dir if `patchctl index`
// wrote a newer one there: that is how an origin that is running learns of
// new releases.
func (a *agentState) reloadIndex() {
	env, err := os.ReadFile(filepath.Join(a.n.cfg.DataDir, indexFile))
	if err != nil {
		return
	}
	a.mu.Lock()
	same := a.heldEnv != nil && string(env) == string(a.heldEnv)
	a.mu.Unlock()
	if same {
		return
	}
	if err := a.adopt(env); err != nil {
		a.log.Warn("agent: index file refused", "err", err)
	}
}

func (a *agentState) loadIndex() error {
	env, err := os.ReadFile(filepath.Join(a.n.cfg.DataDir, indexFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	ix, err := a.n.cfg.Root.VerifyIndex(env, a.now(), nil)
	if err != nil {
		return err
	}
	a.held, a.heldEnv = ix, env
	return nil
}

// reconcile starts work on every release of the index meant for this site
// that is not done and not being worked on.
func (a *agentState) reconcile() {
	role := a.n.cfg.Role
	if role == RoleOrigin {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held == nil || a.ctx.Err() != nil {
		return
	}
	if role == RoleNode {
		a.reconcileNode()
		return
	}
	for _, e := range a.held.Releases {
		if !deployedToSite(a.held, e, a.n.cfg.Site) || a.working[e.Name] {
			continue
		}
		st := a.states[e.Name]
		if st.CID == e.CID && st.State == p2p.StateHave {
			continue
		}
		a.states[e.Name] = ReleaseState{Name: e.Name, CID: e.CID, State: p2p.StateFetching}
		a.work(e.Name, func() error { return a.replicate(e) }, func(err error, backoff time.Duration) {
			a.states[e.Name] = ReleaseState{Name: e.Name, CID: e.CID, State: StateFailed, Error: err.Error()}
			a.log.Warn("agent: release failed; retrying", "release", e.Name, "in", backoff, "err", err)
		})
	}
}

func (a *agentState) setState(e manifest.IndexEntry, state string) {
	a.mu.Lock()
	a.states[e.Name] = ReleaseState{Name: e.Name, CID: e.CID, State: state}
	a.mu.Unlock()
}

// envelopeFor gets e's envelope from peers, verified and matching e.
func (a *agentState) envelopeFor(ctx context.Context, e manifest.IndexEntry, peers []peer.ID) ([]byte, *manifest.Manifest, cid.Cid, error) {
	if r, err := a.n.Catalog.Get(e.CID); err == nil {
		if _, _, err := a.n.cfg.Root.VerifyManifest(r.Envelope, a.now()); err == nil {
			return r.Envelope, r.Manifest, r.CID, nil
		}
	}
	return a.n.fetchEnvelope(ctx, a.n.cfg.Root, e.CID, peers, a.now())
}

// replicate brings a release to a proxy: from sibling proxies where they
// have the chunks, from the upstreams where none does, each chunk once over
// the WAN. The release is pinned from the start, so the cache never evicts
// what the site still needs.
func (a *agentState) replicate(e manifest.IndexEntry) error {
	ctx := a.ctx
	n := a.n
	var siblings []peer.ID
	for _, info := range n.cfg.Siblings {
		siblings = append(siblings, info.ID)
	}
	// The envelope from the upstreams first: they have it, while siblings
	// may be waiting for it themselves.
	env, m, id, err := a.envelopeFor(ctx, e, append(a.upstreamIDs(), siblings...))
	peers := append(slices.Clone(siblings), a.upstreamIDs()...)
	if err != nil {
		return err
	}
	ids := m.ChunkIDs()
	if err := n.Store.Pin(ctx, m.Name, ids); err != nil {
		return err
	}
	// Proxies of sibling sites split the release: each gets its own part
	// over the WAN from the upstreams, and the others' parts from them.
	group := append([]peer.ID{n.Host.ID()}, siblings...)
	slices.Sort(group)
	opts := FetchOptions{Swarm: p2p.FetchConfig{
		Costly:      func(p peer.ID) bool { return a.upstreams[p] },
		Share:       group,
		NoEndgame:   true,
		Limiter:     a.wan,
		IdleTimeout: fetchIdle,
	}}
	sum, err := n.fetchRelease(ctx, env, m, id, peers, a.cache, opts, time.Now())
	if err != nil {
		return err
	}
	a.claim(ids)
	a.log.Info("agent: release replicated", "release", m.Name, "chunks", sum.ChunksFetched, "bytes", sum.BytesFetched, "seconds", sum.Seconds, "peer_bytes", sum.Peers)
	a.setState(e, p2p.StateHave)
	a.updatePins()
	return nil
}

// claim records chunks of a release held whole: the proxy serves them from
// then on, through its cache if they were evicted.
func (a *agentState) claim(ids []cid.Cid) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.claimed[id]++
	}
}

// Has is a proxy's answer to the have protocol: what it holds, and every
// chunk of a release it held whole, which its cache gets again on demand.
func (a *agentState) Has(ctx context.Context, id cid.Cid) (bool, error) {
	a.mu.Lock()
	claimed := a.claimed[id] > 0
	a.mu.Unlock()
	if claimed {
		return true, nil
	}
	return a.n.Store.Has(ctx, id)
}

// fetchIdle ends an agent's fetch whose peers have gone quiet, so that it
// starts again soon with the peers of the moment (a restarted proxy, new
// site peers) instead of waiting on the old ones.
const fetchIdle = 10 * time.Second

// maxSwarmPeers bounds the site peers a tracker names to one node: enough
// to swarm (the proxy is always a peer besides), few enough that a large
// site is not a mesh of connections and subscriptions. In a testnet of 20
// sites of 25 nodes, 8 meant ~12 connections a node and 38 s until every
// node installed; 4 meant ~6 and 31 s, on the same 2 cores. Later, with
// installs staged during the fetch, 4 gave 1.32, 1.32 and 1.37 times the
// lower bound, 3 gave 1.30, 1.27 and 1.36 (2,300 connections instead of
// 2,900), and 2 gave 1.30, 1.27 and 1.27: 3 keeps a spare peer for a
// node whose peer fails.
const maxSwarmPeers = 3

// updatePins unpins, on a proxy, the releases every site node it knows has
// installed, and lets the cache evict their chunks. A release stays pinned
// while any known node has not reported it installed, and while no node has
// reported at all.
func (a *agentState) updatePins() {
	if a.cache == nil {
		return
	}
	a.mu.Lock()
	var done []string
	if a.held != nil && len(a.members) > 0 {
		for _, e := range a.held.Releases {
			if !e.ForSite(a.n.cfg.Site) || a.states[e.Name].State != p2p.StateHave {
				continue
			}
			all := true
			for _, m := range a.members {
				if m.releases[e.CID] != p2p.StateInstalled {
					all = false
					break
				}
			}
			if all {
				done = append(done, e.Name)
			}
		}
	}
	a.mu.Unlock()
	if len(done) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
	defer cancel()
	pins, err := a.n.Store.Pins(ctx)
	if err != nil {
		a.log.Warn("agent: read pins", "err", err)
		return
	}
	unpinned := false
	for _, name := range done {
		if _, ok := pins[name]; ok {
			if err := a.n.Store.Unpin(ctx, name); err != nil {
				a.log.Warn("agent: unpin", "release", name, "err", err)
				continue
			}
			unpinned = true
		}
	}
	if unpinned {
		if err := a.cache.Evict(ctx); err != nil {
			a.log.Warn("agent: evict", "err", err)
		}
	}
}
