package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// NodeConfig configures a node. The zero value of each optional field is a
// sensible default.
type NodeConfig struct {
	DataDir     string
	ListenAddrs []string // default p2p.DefaultListenAddrs()
	// NetworkKey closes the swarm to nodes with the same pre-shared key.
	NetworkKey []byte
	// Allow, if not empty, are the only peers the node talks to.
	Allow []peer.ID
	// MaxUploadRate caps what the node serves, in bytes/s; 0 is unlimited.
	MaxUploadRate int
	// Gater, if set, decides which peers and addresses the host may dial
	// and accept, beside Allow; the testnet uses it to make hosts dial one
	// another only through shaped links.
	Gater connmgr.ConnectionGater
	// HostReady, if set, is called with the host before the node serves
	// or its agent dials anyone: the testnet wires its links with it.
	HostReady func(host.Host)
	// DialTCP, if set, opens the host's outgoing TCP connections (see
	// p2p.HostConfig).
	DialTCP tcp.DialerForAddr
	// Peers is how many peers the host holds connections to at once (see
	// p2p.HostConfig); 0 is defaultServingPeers for an origin or proxy,
	// libp2p's defaults for a node.
	Peers int

	// The fields below make the node an agent of a site that learns of
	// releases by itself. Without a Root the node only serves what it has
	// and fetches what it is told to.
	AgentConfig
}

// Node is a peer of the swarm: a libp2p host serving the manifests, have
// bitmaps and chunks of the releases in its data dir, and of the releases it
// is fetching, as their chunks arrive.
type Node struct {
	Host    host.Host
	Store   *store.Disk
	Catalog *Catalog

	notifier *p2p.HaveNotifier
	manifest *p2p.ManifestService
	have     *p2p.HaveService
	chunk    *p2p.ChunkService

	cfg    NodeConfig
	client *p2p.Client

	mu       sync.Mutex
	fetching map[cid.Cid]*inFlight // releases being fetched, by manifest CID
	known    chan struct{}         // closed and replaced when fetching gains a release

	agent *agentState // nil unless cfg.Root is set
}

// defaultServingPeers is how many peers an origin or a proxy holds at once
// unless told otherwise: every node of a large site, or the proxies of
// thousands of sites, or an origin that nodes fetch from directly. libp2p's
// defaults stop at 192 peers and 256 inbound connections, and a 500-node
// test fleet of direct clients stalled on them.
const defaultServingPeers = 4096

func (cfg NodeConfig) peers() int {
	if cfg.Peers == 0 && cfg.Root != nil && (cfg.Role == RoleOrigin || cfg.Role == RoleProxy) {
		return defaultServingPeers
	}
	return cfg.Peers
}

// inFlight is a release being fetched, served to peers as its chunks arrive.
type inFlight struct {
	name     string
	envelope []byte
	chunks   []cid.Cid
}

// StartNode opens the data dir and starts serving.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	s, err := store.OpenDisk(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cat, err := OpenCatalog(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if err := cfg.AgentConfig.validate(); err != nil {
		return nil, err
	}
	hc := p2p.HostConfig{DataDir: cfg.DataDir, ListenAddrs: cfg.ListenAddrs, NetworkKey: cfg.NetworkKey, Gater: cfg.Gater, DialTCP: cfg.DialTCP, Peers: cfg.peers()}
	if len(cfg.Allow) > 0 {
		hc.Allow = p2p.NewAllowlist(cfg.Allow...)
	}
	h, err := p2p.NewHost(ctx, hc)
	if err != nil {
		return nil, err
	}
	if cfg.HostReady != nil {
		cfg.HostReady(h)
	}
	n := &Node{
		Host: h, Store: s, Catalog: cat, cfg: cfg,
		client:   &p2p.Client{Host: h},
		notifier: p2p.NewHaveNotifier(),
		fetching: map[cid.Cid]*inFlight{},
		known:    make(chan struct{}),
	}
	var frames store.FrameGetter = s
	var has store.Haser = s
	if cfg.Root != nil {
		if err := n.startAgent(ctx); err != nil {
			h.Close()
			return nil, err
		}
		if n.agent.cache != nil {
			frames, has = n.agent.cache, n.agent
		}
	}
	n.manifest = p2p.NewManifestService(h, n, p2p.ManifestConfig{Logger: cfg.Logger})
	n.have = p2p.NewHaveService(h, n, has, n.notifier, p2p.HaveConfig{Logger: cfg.Logger})
	n.chunk = p2p.NewChunkService(h, frames, p2p.ChunkConfig{Limiter: p2p.NewRateLimiter(cfg.MaxUploadRate), Logger: cfg.Logger})
	if n.agent != nil {
		n.runAgent()
	}
	return n, nil
}

// Close stops the agent, stops serving and waits for the handlers to end.
func (n *Node) Close() error {
	if n.agent != nil {
		n.agent.stop()
	}
	n.chunk.Close()
	n.have.Close()
	n.manifest.Close()
	return n.Host.Close()
}

// Addrs returns the node's listen addresses with its peer ID, as peers dial
// them.
func (n *Node) Addrs() []ma.Multiaddr {
	info := peer.AddrInfo{ID: n.Host.ID(), Addrs: n.Host.Addrs()}
	addrs, err := peer.AddrInfoToP2pAddrs(&info)
	if err != nil {
		return nil // unreachable: the host's own ID and addresses are valid
	}
	return addrs
}

// Envelope serves the manifest protocol from the catalog and the releases
// being fetched.
func (n *Node) Envelope(ctx context.Context, ref string) ([]byte, error) {
	r, err := n.lookup(ctx, ref)
	if err != nil {
		return nil, err
	}
	return r.envelope, nil
}

// ReleaseChunks serves the have protocol for releases held and being fetched.
func (n *Node) ReleaseChunks(ctx context.Context, id cid.Cid) ([]cid.Cid, error) {
	r, err := n.lookup(ctx, id.String())
	if err != nil {
		return nil, err
	}
	return r.chunks, nil
}

// knownWait is how long a request for a release this node does not know yet
// waits for it to appear: peers learn of a release at about the same time,
// and one that asks a moment before this node starts on it would otherwise
// give up on this node for the whole fetch.
const knownWait = 5 * time.Second

// lookup finds the release ref (a name or manifest CID) among those being
// fetched and in the catalog, waiting up to knownWait for it to appear.
func (n *Node) lookup(ctx context.Context, ref string) (*inFlight, error) {
	deadline := time.NewTimer(knownWait)
	defer deadline.Stop()
	for {
		n.mu.Lock()
		known := n.known
		for id, r := range n.fetching {
			if r.name == ref || id.String() == ref {
				n.mu.Unlock()
				return r, nil
			}
		}
		n.mu.Unlock()
		r, err := n.Catalog.Get(ref)
		if err == nil {
			return &inFlight{name: r.Name, envelope: r.Envelope, chunks: r.Manifest.ChunkIDs()}, nil
		}
		if !errors.Is(err, ErrReleaseNotFound) {
			return nil, err
		}
		select {
		case <-known:
		case <-deadline.C:
			return nil, fmt.Errorf("%w: %w", p2p.ErrNotFound, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// startFetching serves r while it is fetched, and wakes lookups waiting for it.
func (n *Node) startFetching(id cid.Cid, r *inFlight) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fetching[id] = r
	close(n.known)
	n.known = make(chan struct{})
}

func (n *Node) stopFetching(id cid.Cid) {
	n.mu.Lock()
	delete(n.fetching, id)
	n.mu.Unlock()
}

// FetchOptions tune Node.Fetch.
type FetchOptions struct {
	Progress func(p2p.FetchProgress)
	Swarm    p2p.FetchConfig // Notifier and Progress are set by Fetch
	Now      func() time.Time
}

// FetchSummary is what a fetch did, as `patchctl fetch --json` prints it.
type FetchSummary struct {
	Name          string             `json:"name"`
	CID           string             `json:"cid"`
	ChunksTotal   int                `json:"chunks_total"`
	ChunksPresent int                `json:"chunks_present"`
	ChunksFetched int                `json:"chunks_fetched"`
	BytesFetched  int64              `json:"bytes_fetched"`
	Duplicates    int                `json:"duplicate_chunks"`
	Seconds       float64            `json:"seconds"`
	Peers         map[string]int64   `json:"peer_bytes"`
	Banned        []string           `json:"banned_peers,omitempty"`
	Manifest      *manifest.Manifest `json:"-"`
}

// Connect adds peers' addresses (multiaddrs ending in /p2p/<id>) to the
// peerstore and returns their IDs.
func (n *Node) Connect(addrs []string) ([]peer.ID, error) {
	var ids []peer.ID
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("peer address %q: %w", s, err)
		}
		info, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("peer address %q must end in /p2p/<peer-id>: %w", s, err)
		}
		n.Host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		ids = append(ids, info.ID)
	}
	return ids, nil
}

// Fetch gets the release ref (a name or manifest CID) from peers: the
// envelope first, verified against root and checked against the release of
// that name held here (rollback); then every missing chunk, verified as it
// arrives and served on to other peers at once; then the release is pinned
// and its envelope saved, so it is served as a whole from then on.
func (n *Node) Fetch(ctx context.Context, root *manifest.Root, ref string, peers []peer.ID, opts FetchOptions) (*FetchSummary, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	start := time.Now()
	envelope, m, id, err := n.fetchEnvelope(ctx, root, ref, peers, now())
	if err != nil {
		return nil, err
	}
	return n.fetchRelease(ctx, envelope, m, id, peers, n.Store, opts, start)
}

// fetchRelease fetches the chunks of a verified release into s, then makes
// them durable, pins them and saves the envelope.
func (n *Node) fetchRelease(ctx context.Context, envelope []byte, m *manifest.Manifest, id cid.Cid, peers []peer.ID, s p2p.FetchStore, opts FetchOptions, start time.Time) (*FetchSummary, error) {
	ids := m.ChunkIDs()
	n.startFetching(id, &inFlight{name: m.Name, envelope: envelope, chunks: ids})
	defer n.stopFetching(id)
	cfg := opts.Swarm
	cfg.Notifier = n.notifier
	cfg.Progress = opts.Progress
	res, err := p2p.Fetch(ctx, n.Host, s, m, id, peers, cfg)
	sum := &FetchSummary{Name: m.Name, CID: id.String(), Peers: map[string]int64{}, Manifest: m}
	if res != nil {
		sum.ChunksTotal, sum.ChunksPresent, sum.ChunksFetched = res.ChunksTotal, res.ChunksPresent, res.ChunksFetched
		sum.BytesFetched, sum.Duplicates = res.BytesFetched, res.Duplicates
		for p, st := range res.Peers {
			sum.Peers[p.String()] = st.WireBytes
			if st.Banned {
				sum.Banned = append(sum.Banned, p.String())
			}
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	if err != nil {
		return sum, fmt.Errorf("fetch %s: %w", m.Name, err)
	}
	// Chunk names durable, then the pin, then the envelope: the same order
	// as publishing, for the same reason.
	if err := n.Store.Sync(ctx); err != nil {
		return sum, err
	}
	if err := n.Store.Pin(ctx, m.Name, ids); err != nil {
		return sum, err
	}
	if err := n.Catalog.Save(m.Name, envelope); err != nil {
		return sum, err
	}
	sum.Seconds = time.Since(start).Seconds()
	return sum, nil
}

// fetchEnvelope asks peers in turn for ref's envelope until one verifies.
func (n *Node) fetchEnvelope(ctx context.Context, root *manifest.Root, ref string, peers []peer.ID, now time.Time) ([]byte, *manifest.Manifest, cid.Cid, error) {
	wantID, byCID := cid.Undef, false
	if c, err := cid.Decode(ref); err == nil {
		wantID, byCID = c, true
	}
	client := &p2p.Client{Host: n.Host}
	var errs []error
	for _, p := range peers {
		envelope, err := client.GetEnvelope(ctx, p, ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, id, err := root.VerifyManifest(envelope, now)
		if err != nil {
			// A peer handing out envelopes that do not verify is either
			// behind on trust or lying; either way, try the next.
			errs = append(errs, fmt.Errorf("envelope of %s from %s: %w", ref, p, err))
			continue
		}
		if (byCID && !id.Equals(wantID)) || (!byCID && m.Name != ref) {
			errs = append(errs, fmt.Errorf("%s answered %s with %s (%s): %w", p, ref, m.Name, id, manifest.ErrTampered))
			continue
		}
		held, err := n.Catalog.Get(m.Name)
		switch {
		case errors.Is(err, ErrReleaseNotFound):
		case err != nil:
			return nil, nil, cid.Undef, err
		default:
			if err := manifest.CheckSequence(held.Manifest, m); err != nil {
				return nil, nil, cid.Undef, err
			}
		}
		return envelope, m, id, nil
	}
	if len(peers) == 0 {
		return nil, nil, cid.Undef, fmt.Errorf("fetch %s: no peers given: %w", ref, p2p.ErrNoSource)
	}
	return nil, nil, cid.Undef, fmt.Errorf("fetch %s: no peer gave a valid envelope: %w", ref, errors.Join(errs...))
}
