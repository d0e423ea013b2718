package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
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

	mu       sync.Mutex
	fetching map[cid.Cid][]cid.Cid // releases being fetched: manifest CID → chunks
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
	hc := p2p.HostConfig{DataDir: cfg.DataDir, ListenAddrs: cfg.ListenAddrs, NetworkKey: cfg.NetworkKey}
	if len(cfg.Allow) > 0 {
		hc.Allow = p2p.NewAllowlist(cfg.Allow...)
	}
	h, err := p2p.NewHost(ctx, hc)
	if err != nil {
		return nil, err
	}
	n := &Node{Host: h, Store: s, Catalog: cat, notifier: p2p.NewHaveNotifier(), fetching: map[cid.Cid][]cid.Cid{}}
	n.manifest = p2p.NewManifestService(h, n, p2p.ManifestConfig{})
	n.have = p2p.NewHaveService(h, n, s, n.notifier, p2p.HaveConfig{})
	n.chunk = p2p.NewChunkService(h, s, p2p.ChunkConfig{Limiter: p2p.NewRateLimiter(cfg.MaxUploadRate)})
	return n, nil
}

// Close stops serving and waits for the handlers to end.
func (n *Node) Close() error {
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

// Envelope serves the manifest protocol from the catalog.
func (n *Node) Envelope(_ context.Context, ref string) ([]byte, error) {
	r, err := n.Catalog.Get(ref)
	if err != nil {
		if errors.Is(err, ErrReleaseNotFound) {
			return nil, fmt.Errorf("%w: %w", p2p.ErrNotFound, err)
		}
		return nil, err
	}
	return r.Envelope, nil
}

// ReleaseChunks serves the have protocol for releases held and being fetched.
func (n *Node) ReleaseChunks(_ context.Context, id cid.Cid) ([]cid.Cid, error) {
	n.mu.Lock()
	ids, ok := n.fetching[id]
	n.mu.Unlock()
	if ok {
		return ids, nil
	}
	r, err := n.Catalog.Get(id.String())
	if err != nil {
		if errors.Is(err, ErrReleaseNotFound) {
			return nil, fmt.Errorf("%w: %w", p2p.ErrNotFound, err)
		}
		return nil, err
	}
	return r.Manifest.ChunkIDs(), nil
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
	ids := m.ChunkIDs()
	n.mu.Lock()
	n.fetching[id] = ids
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.fetching, id)
		n.mu.Unlock()
	}()
	cfg := opts.Swarm
	cfg.Notifier = n.notifier
	cfg.Progress = opts.Progress
	res, err := p2p.Fetch(ctx, n.Host, n.Store, m, id, peers, cfg)
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
