package testnet

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// Config describes a network of sites: an origin, and per site a proxy and
// NodesPerSite nodes. Rates are in bytes/s; 0 is unlimited.
type Config struct {
	Sites        int
	NodesPerSite int
	// WAN is each site's link to the rest of the world, one pipe per
	// direction shared by every flow into or out of the site.
	WAN int64
	// NodeLink is each node's and proxy's own link, per direction.
	NodeLink int64
	// OriginUplink is the origin's link, per direction.
	OriginUplink int64
	// WANLatency and LANLatency are the one-way delays of a site's WAN
	// link and of each node's link.
	WANLatency, LANLatency time.Duration
	// Dir holds every member's data dir.
	Dir string
	// NoSwarm makes the nodes fetch from the origin only, through their
	// site's WAN, and leaves the sites without proxies: the baseline.
	NoSwarm bool
	// SiblingProxies lets the proxies of neighbouring sites share chunks:
	// the sites are cut, in order, into groups of at most SiblingGroup
	// (default 4), and each proxy names the others of its group as its
	// siblings. Every proxy of a group sends on the others' parts over its
	// own WAN uplink, (g-1)/g of a copy for a group of g: a group of 4
	// leaves the uplinks a quarter spare, and each proxy keeps 3 sibling
	// connections (docs/decisions/0029). The origin sends one copy per
	// group.
	SiblingProxies bool
	SiblingGroup   int
	// CacheQuota bounds each proxy's chunks (0: no bound).
	CacheQuota int64
	// OfflineAfter is how many poll intervals a site node may stay
	// silent before its proxy counts it offline and drops its pins
	// (0: the agent's default).
	OfflineAfter int
	// KeepChunks makes the nodes keep the chunks of what they installed
	// (agent.NodeConfig.KeepChunks) instead of letting go of them once
	// their site's proxy holds the release.
	KeepChunks bool
	// PollInterval is the agents' poll interval (default 1 s).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Member is one agent of the network with its own link.
type Member struct {
	Name string
	Role agent.Role
	Site *Site // nil for the origin
	// Agent is the member's running agent, nil while it is stopped.
	Agent *agent.Agent
	// Up carries what the member sends, Down what it receives.
	Up, Down *Pipe

	id    peer.ID
	addr  string // the running host's TCP listen address, host:port
	dir   string
	cfg   agent.Config
	gater *linkGater
	stop  context.CancelFunc // ends the running agent's Run
	ran   chan error         // what Run returned
}

// ID returns the member's peer ID, which stays the same across restarts.
func (m *Member) ID() peer.ID { return m.id }

// Site is a site: a proxy, nodes, and the WAN pipes every byte into or out
// of the site crosses.
type Site struct {
	Name           string
	Proxy          *Member
	Nodes          []*Member
	WANUp, WANDown *Pipe
	// partitioned cuts the site's WAN: its links refuse to carry bytes.
	partitioned bool
}

// Network is a running network of members on loopback whose connections are
// all shaped, at the dialing end, by the pipes of the links they cross.
type Network struct {
	cfg  Config
	Root *manifest.Root
	// RootEnvelope is Root signed, as the agents are given it.
	RootEnvelope []byte
	Key          ed25519.PrivateKey
	Origin       *Member
	Sites        []*Site

	mu      sync.Mutex
	members map[peer.ID]*Member
	// byAddr finds a running member by its host's TCP listen address.
	byAddr map[string]*Member
	// links are the open connections, each with the members it joins.
	links map[*ShapedConn][2]*Member
}

// New starts a network as cfg describes, with a fresh trust root whose only
// key is returned in Key for publishing.
func New(ctx context.Context, cfg Config) (*Network, error) {
	if cfg.Sites < 1 || cfg.NodesPerSite < 1 {
		return nil, fmt.Errorf("testnet: need at least one site of one node, got %d × %d", cfg.Sites, cfg.NodesPerSite)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	quietLibp2pLogs()
	key, root, err := NewTrust()
	if err != nil {
		return nil, err
	}
	rootEnv, err := manifest.SignRoot(root, key)
	if err != nil {
		return nil, err
	}
	n := &Network{cfg: cfg, Root: root, RootEnvelope: rootEnv, Key: key, members: map[peer.ID]*Member{}, byAddr: map[string]*Member{}, links: map[*ShapedConn][2]*Member{}}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	n.Origin = n.newMember("origin", agent.RoleOrigin, nil, cfg.OriginUplink)
	for i := range cfg.Sites {
		s := &Site{
			Name:    fmt.Sprintf("site%02d", i+1),
			WANUp:   NewPipe(fmt.Sprintf("site%02d-wan-up", i+1), cfg.WAN, cfg.WANLatency),
			WANDown: NewPipe(fmt.Sprintf("site%02d-wan-down", i+1), cfg.WAN, cfg.WANLatency),
		}
		if !cfg.NoSwarm {
			s.Proxy = n.newMember(s.Name+"-proxy", agent.RoleProxy, s, cfg.NodeLink)
		}
		for j := range cfg.NodesPerSite {
			s.Nodes = append(s.Nodes, n.newMember(fmt.Sprintf("%s-node%02d", s.Name, j+1), agent.RoleNode, s, cfg.NodeLink))
		}
		n.Sites = append(n.Sites, s)
	}
	// Identities first, so every member's configuration can name the
	// peers it talks to; then start them from the root of the tree down,
	// so that whatever a member dials is already listening.
	for _, m := range n.all() {
		if err := n.identify(m); err != nil {
			return nil, err
		}
	}
	for _, m := range n.all() {
		n.configure(m)
		if err := n.Start(ctx, m); err != nil {
			return nil, err
		}
	}
	ok = true
	return n, nil
}

func (n *Network) newMember(name string, role agent.Role, s *Site, link int64) *Member {
	lat := n.cfg.LANLatency
	return &Member{
		Name: name, Role: role, Site: s,
		Up:   NewPipe(name+"-up", link, lat),
		Down: NewPipe(name+"-down", link, lat),
		dir:  filepath.Join(n.cfg.Dir, name),
	}
}

// all lists the members, origin first, then each site's proxy and nodes.
func (n *Network) all() []*Member {
	out := []*Member{n.Origin}
	for _, s := range n.Sites {
		if s.Proxy != nil {
			out = append(out, s.Proxy)
		}
		out = append(out, s.Nodes...)
	}
	return out
}

func (n *Network) identify(m *Member) error {
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return err
	}
	id, err := p2p.LoadPeerID(m.dir)
	if err != nil {
		return err
	}
	m.id = id
	n.mu.Lock()
	n.members[id] = m
	n.mu.Unlock()
	return nil
}

// configure sets m's agent configuration: its upstreams, siblings and site.
func (n *Network) configure(m *Member) {
	m.gater = &linkGater{net: n, self: m}
	cfg := agent.Config{
		PeerConfig: agent.PeerConfig{
			DataDir:     m.dir,
			ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
			Gater:       m.gater,
			HostReady:   m.gater.setHost,
			DialTCP:     m.gater.dialer,
			Logger:      n.cfg.Logger,
		},
		Trust:        n.RootEnvelope,
		PollInterval: n.cfg.PollInterval,
	}
	switch m.Role {
	case agent.RoleOrigin:
		cfg.Origin = &agent.OriginConfig{}
	case agent.RoleProxy:
		pc := &agent.ProxyConfig{
			Uplink:       agent.Uplink{Site: m.Site.Name, Upstreams: []peer.AddrInfo{{ID: n.Origin.id}}},
			CacheQuota:   n.cfg.CacheQuota,
			OfflineAfter: n.cfg.OfflineAfter,
		}
		if n.cfg.SiblingProxies {
			for _, s := range n.siblingsOf(m.Site) {
				pc.Siblings = append(pc.Siblings, peer.AddrInfo{ID: s.Proxy.id})
			}
		}
		cfg.Proxy = pc
	case agent.RoleNode:
		nc := &agent.NodeConfig{
			Uplink: agent.Uplink{Site: m.Site.Name, Upstreams: []peer.AddrInfo{{ID: m.Site.Proxy.idOrOrigin(n)}}},
			// The generated packs are server service packs whose
			// signed install command leaves a marker.
			Target:               "server",
			AllowReleaseCommands: true,
			NoSwarm:              n.cfg.NoSwarm,
			KeepChunks:           n.cfg.KeepChunks,
		}
		cfg.Node = nc
	}
	m.cfg = cfg
}

// idOrOrigin is the peer ID of a node's upstream: its site's proxy, or the
// origin where sites have none (the no-swarm baseline).
func (m *Member) idOrOrigin(n *Network) peer.ID {
	if m == nil {
		return n.Origin.id
	}
	return m.id
}

// Reconfigure changes the configuration m's agent starts with, for its next
// Start: an agent upgraded, or started with other settings.
func (m *Member) Reconfigure(fn func(*agent.Config)) {
	cfg := m.cfg
	switch {
	case cfg.Proxy != nil:
		pc := *cfg.Proxy
		cfg.Proxy = &pc
	case cfg.Node != nil:
		nc := *cfg.Node
		cfg.Node = &nc
	}
	fn(&cfg)
	m.cfg = cfg
}

// Start starts m's agent, or starts it again after Stop; it keeps its data
// dir and peer ID.
func (n *Network) Start(ctx context.Context, m *Member) error {
	a, err := agent.New(ctx, m.cfg)
	if err != nil {
		return fmt.Errorf("testnet: start %s: %w", m.Name, err)
	}
	addr, err := tcpAddr(a.Peer().Host.Addrs())
	if err != nil {
		a.Close()
		return fmt.Errorf("testnet: start %s: %w", m.Name, err)
	}
	rctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(rctx) }()
	n.mu.Lock()
	m.Agent, m.stop, m.ran = a, stop, ran
	m.addr = addr
	n.byAddr[addr] = m
	n.mu.Unlock()
	return nil
}

// Stop stops m's agent as a crash would stop the process: connections
// through its links are cut; its data dir stays.
func (n *Network) Stop(m *Member) error {
	n.mu.Lock()
	running := m.Agent != nil
	stop, ran := m.stop, m.ran
	m.Agent, m.stop, m.ran = nil, nil, nil
	delete(n.byAddr, m.addr)
	cut := n.unlink(func(a, b *Member) bool { return a == m || b == m })
	n.mu.Unlock()
	closeAll(cut)
	if !running {
		return nil
	}
	stop()
	return <-ran
}

// Partition cuts (or, with cut false, heals) a site's WAN: every
// connection that crosses it is closed and no new one opens.
func (n *Network) Partition(s *Site, cut bool) {
	n.mu.Lock()
	s.partitioned = cut
	var conns []*ShapedConn
	if cut {
		conns = n.unlink(func(a, b *Member) bool { return a.Site != b.Site && (a.Site == s || b.Site == s) })
	}
	n.mu.Unlock()
	closeAll(conns)
}

// unlink forgets and returns the connections between members that match;
// n.mu is held.
func (n *Network) unlink(match func(a, b *Member) bool) []*ShapedConn {
	var out []*ShapedConn
	for c, ends := range n.links {
		if match(ends[0], ends[1]) {
			out = append(out, c)
			delete(n.links, c)
		}
	}
	return out
}

func closeAll(conns []*ShapedConn) {
	for _, c := range conns {
		c.Close()
	}
}

// Close stops every member and link.
func (n *Network) Close() error {
	var errs []error
	for _, m := range n.all() {
		if m == nil {
			continue
		}
		if err := n.Stop(m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// path returns the pipes bytes from a to b cross: a's link, the WAN of a's
// site and of b's site if they differ, and b's link.
func path(a, b *Member) Path {
	p := Path{a.Up}
	if a.Site != b.Site {
		if a.Site != nil {
			p = append(p, a.Site.WANUp)
		}
		if b.Site != nil {
			p = append(p, b.Site.WANDown)
		}
	}
	return append(p, b.Down)
}

// reachable returns the listen address of the running member with peer ID
// to, if from may reach it: two sites talk only while neither is
// partitioned.
func (n *Network) reachable(from *Member, to peer.ID) (ma.Multiaddr, bool) {
	n.mu.Lock()
	dst := n.members[to]
	ok := dst != nil && n.mayTalk(from, dst)
	var addr string
	if ok {
		addr = dst.addr
	}
	n.mu.Unlock()
	if !ok {
		return nil, false
	}
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, false
	}
	a, err := manet.FromNetAddr(ta)
	return a, err == nil
}

// mayTalk reports whether from may reach dst now; n.mu is held.
func (n *Network) mayTalk(from, dst *Member) bool {
	if dst.Agent == nil {
		return false
	}
	return from.Site == dst.Site || ((from.Site == nil || !from.Site.partitioned) && (dst.Site == nil || !dst.Site.partitioned))
}

// dial opens a connection from a member to the member listening at addr,
// shaped by the pipes of the path between them, and keeps it so that a stop
// or partition can cut it.
func (n *Network) dial(ctx context.Context, from *Member, addr string) (net.Conn, error) {
	n.mu.Lock()
	dst := n.byAddr[addr]
	ok := dst != nil && n.mayTalk(from, dst)
	n.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("testnet: %s cannot reach %s", from.Name, addr)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := Shape(raw, path(from, dst), path(dst, from))
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.mayTalk(from, dst) || n.byAddr[addr] != dst {
		c.Close()
		return nil, fmt.Errorf("testnet: %s cannot reach %s", from.Name, dst.Name)
	}
	n.links[c] = [2]*Member{from, dst}
	return c, nil
}

// siblingsOf returns the other sites of s's sibling group: the sites are cut
// in order into as few groups of at most SiblingGroup as will do, of sizes
// that differ by at most one.
func (n *Network) siblingsOf(s *Site) []*Site {
	size := n.cfg.SiblingGroup
	if size <= 0 {
		size = defaultSiblingGroup
	}
	groups := (len(n.Sites) + size - 1) / size
	group := func(i int) int { return i * groups / len(n.Sites) }
	me := slices.Index(n.Sites, s)
	var out []*Site
	for i, o := range n.Sites {
		if o != s && group(i) == group(me) {
			out = append(out, o)
		}
	}
	return out
}

// defaultSiblingGroup is how many sites' proxies share by default.
const defaultSiblingGroup = 4

// tcpAddr returns the first TCP loopback address of addrs as host:port.
func tcpAddr(addrs []ma.Multiaddr) (string, error) {
	for _, a := range addrs {
		na, err := manet.ToNetAddr(a)
		if err != nil {
			continue
		}
		if t, ok := na.(*net.TCPAddr); ok && t.IP.IsLoopback() {
			return t.String(), nil
		}
	}
	return "", fmt.Errorf("no loopback TCP address among %v", addrs)
}

// linkGater lets a member dial a peer only while the network lets them
// talk, and only at the peer's current listen address, which it learns just
// before dialing; its dialer shapes every connection it opens.
type linkGater struct {
	net  *Network
	self *Member
	host atomic.Pointer[host.Host] // the member's host of the moment
}

func (g *linkGater) setHost(h host.Host) { g.host.Store(&h) }

// dialer is the host's TCP dialer for every address.
func (g *linkGater) dialer(ma.Multiaddr) (tcp.ContextDialer, error) { return memberDialer{g}, nil }

type memberDialer struct{ g *linkGater }

func (d memberDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.g.net.dial(ctx, d.g.self, addr)
}

func (g *linkGater) InterceptPeerDial(p peer.ID) bool {
	addr, ok := g.net.reachable(g.self, p)
	if !ok {
		return false
	}
	h := g.host.Load()
	if h == nil {
		return false
	}
	ps := (*h).Peerstore()
	if !containsAddr(ps.Addrs(p), addr) {
		ps.ClearAddrs(p)
		ps.AddAddrs(p, []ma.Multiaddr{addr}, peerstore.PermanentAddrTTL)
	}
	return true
}

func containsAddr(addrs []ma.Multiaddr, a ma.Multiaddr) bool {
	for _, b := range addrs {
		if b.Equal(a) {
			return true
		}
	}
	return false
}

func (g *linkGater) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	want, ok := g.net.reachable(g.self, p)
	return ok && a.Equal(want)
}

func (g *linkGater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g *linkGater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

func (g *linkGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}
