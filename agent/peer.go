package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
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

// Peer is a member of the swarm: a libp2p host serving the manifests, have
// bitmaps and chunks of the releases in its data dir, and of the releases it
// is fetching, as their chunks arrive. It knows nothing of agents: an agent's
// role hands it what it serves (a proxy, its cache).
type Peer struct {
	Host    host.Host
	Store   *store.Disk
	Catalog *Catalog

	notifier *p2p.HaveNotifier
	manifest *p2p.ManifestService
	have     *p2p.HaveService
	chunk    *p2p.ChunkService

	cfg    PeerConfig
	client *p2p.Client
	// quarantined is told of each chunk the store quarantines.
	quarantined *atomic.Pointer[func(cid.Cid)]

	// dropping is held by dropChunks, and shared by a fetch while it
	// starts serving its release and while it pins it: the chunks a drop
	// deletes are needed by no pin and no fetch under way.
	dropping sync.RWMutex

	mu       sync.Mutex
	fetching map[cid.Cid]*inFlight // releases being fetched, by manifest CID
	known    chan struct{}         // closed and replaced when fetching gains a release
}

// inFlight is a release being fetched, served to peers as its chunks arrive.
type inFlight struct {
	name     string
	envelope []byte
	chunks   []cid.Cid
}

// NewPeer opens the data dir and starts the host, listening; it serves
// nothing until Serve.
func NewPeer(ctx context.Context, cfg PeerConfig) (*Peer, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	quarantined := &atomic.Pointer[func(cid.Cid)]{}
	s, err := store.OpenDiskWith(cfg.DataDir, store.DiskOptions{OnCorrupt: func(id cid.Cid, err error) {
		// The chunk is gone from the store, and no longer offered to
		// peers; the agent fetches it again.
		log.Error("agent: a stored chunk is damaged and was quarantined; it is fetched again", "chunk", id, "err", err)
		if fn := quarantined.Load(); fn != nil {
			(*fn)(id)
		}
	}})
	if err != nil {
		return nil, err
	}
	cat, err := OpenCatalog(cfg.DataDir)
	if err != nil {
		s.Close()
		return nil, err
	}
	hc := p2p.HostConfig{DataDir: cfg.DataDir, ListenAddrs: cfg.ListenAddrs, NetworkKey: cfg.NetworkKey, Gater: cfg.Gater, DialTCP: cfg.DialTCP, Peers: cfg.Peers}
	if len(cfg.Allow) > 0 {
		hc.Allow = p2p.NewAllowlist(cfg.Allow...)
	}
	h, err := p2p.NewHost(ctx, hc)
	if err != nil {
		s.Close()
		return nil, err
	}
	if cfg.HostReady != nil {
		cfg.HostReady(h)
	}
	return &Peer{
		Host: h, Store: s, Catalog: cat, cfg: cfg, quarantined: quarantined,
		client:   &p2p.Client{Host: h},
		notifier: p2p.NewHaveNotifier(),
		fetching: map[cid.Cid]*inFlight{},
		known:    make(chan struct{}),
	}, nil
}

// Serving is what a peer serves beside its catalog's manifests: the zero
// value serves chunks from its own store.
type Serving struct {
	// Frames serves chunk frames (a proxy: its cache over its upstream).
	Frames store.FrameGetter
	// Has answers the have protocol (a proxy: its cache's claims too).
	Has store.Haser
}

// Serve starts serving the manifest, have and chunk protocols.
func (p *Peer) Serve(s Serving) {
	if s.Frames == nil {
		s.Frames = p.Store
	}
	if s.Has == nil {
		s.Has = p.Store
	}
	log := p.cfg.Logger
	p.manifest = p2p.NewManifestService(p.Host, p, p2p.ManifestConfig{Logger: log})
	p.have = p2p.NewHaveService(p.Host, p, s.Has, p.notifier, p2p.HaveConfig{Logger: log})
	p.chunk = p2p.NewChunkService(p.Host, s.Frames, p2p.ChunkConfig{Limiter: p2p.NewRateLimiter(p.cfg.MaxUploadRate), Logger: log})
}

// Close stops serving, waits for the handlers to end and closes the host.
func (p *Peer) Close() error {
	if p.chunk != nil {
		p.chunk.Close()
		p.have.Close()
		p.manifest.Close()
	}
	err := p.Host.Close()
	// The store last: makes every chunk written durable, and lets another
	// process open the data dir.
	return errors.Join(err, p.Store.Close())
}

// fetchedFrom returns how many peers are subscribed now to this peer's have
// bitmap of the release with manifest CID id: peers that may be fetching
// its chunks from this one.
func (p *Peer) fetchedFrom(id cid.Cid) int {
	if p.have == nil {
		return 0
	}
	return p.have.Subscribed(id)
}

// OnQuarantine has fn told of each chunk the store quarantines from now on.
func (p *Peer) OnQuarantine(fn func(cid.Cid)) { p.quarantined.Store(&fn) }

// Addrs returns the node's listen addresses with its peer ID, as peers dial
// them.
func (p *Peer) Addrs() []ma.Multiaddr {
	info := peer.AddrInfo{ID: p.Host.ID(), Addrs: p.Host.Addrs()}
	addrs, err := peer.AddrInfoToP2pAddrs(&info)
	if err != nil {
		return nil // unreachable: the host's own ID and addresses are valid
	}
	return addrs
}

// Envelope serves the manifest protocol from the catalog and the releases
// being fetched.
func (p *Peer) Envelope(ctx context.Context, ref string) ([]byte, error) {
	r, err := p.lookup(ctx, ref)
	if err != nil {
		return nil, err
	}
	return r.envelope, nil
}

// ReleaseChunks serves the have protocol for releases held and being fetched.
func (p *Peer) ReleaseChunks(ctx context.Context, id cid.Cid) ([]cid.Cid, error) {
	r, err := p.lookup(ctx, id.String())
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
func (p *Peer) lookup(ctx context.Context, ref string) (*inFlight, error) {
	deadline := time.NewTimer(knownWait)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		known := p.known
		for id, r := range p.fetching {
			if r.name == ref || id.String() == ref {
				p.mu.Unlock()
				return r, nil
			}
		}
		p.mu.Unlock()
		r, err := p.Catalog.Get(ref)
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
func (p *Peer) startFetching(id cid.Cid, r *inFlight) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fetching[id] = r
	close(p.known)
	p.known = make(chan struct{})
}

func (p *Peer) stopFetching(id cid.Cid) {
	p.mu.Lock()
	delete(p.fetching, id)
	p.mu.Unlock()
}

// FetchOptions tune Peer.Fetch.
type FetchOptions struct {
	Progress func(p2p.FetchProgress)
	Swarm    p2p.FetchConfig // Notifier and Progress are set by Fetch
	Now      func() time.Time
	// Seed, if set, runs once the release is served as being fetched and
	// before any peer is asked: a node stores there the chunks it can take
	// from its own disk. Each chunk it stores it hands to stored, which
	// tells the peers subscribed to this node's have bitmap.
	Seed func(ctx context.Context, stored func(cid.Cid))
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
func (p *Peer) Connect(addrs []string) ([]peer.ID, error) {
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
		p.Host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)
		ids = append(ids, info.ID)
	}
	return ids, nil
}

// Fetch gets the release ref (a name or manifest CID) from peers: the
// envelope first, verified against root and checked against the release of
// that name held here (rollback); then every missing chunk, verified as it
// arrives and served on to other peers at once; then the release is pinned
// and its envelope saved, so it is served as a whole from then on.
func (p *Peer) Fetch(ctx context.Context, root *manifest.Root, ref string, peers []peer.ID, opts FetchOptions) (*FetchSummary, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	start := time.Now()
	envelope, m, id, err := p.fetchEnvelope(ctx, root, ref, peers, now())
	if err != nil {
		return nil, err
	}
	return p.fetchRelease(ctx, envelope, m, id, peers, p.Store, opts, start)
}

// fetchRelease fetches the chunks of a verified release into s, then makes
// them durable, pins them and saves the envelope.
func (p *Peer) fetchRelease(ctx context.Context, envelope []byte, m *manifest.Manifest, id cid.Cid, peers []peer.ID, s p2p.FetchStore, opts FetchOptions, start time.Time) (*FetchSummary, error) {
	ids := m.ChunkIDs()
	p.dropping.RLock()
	p.startFetching(id, &inFlight{name: m.Name, envelope: envelope, chunks: ids})
	p.dropping.RUnlock()
	defer p.stopFetching(id)
	if opts.Seed != nil {
		opts.Seed(ctx, p.notifier.Stored)
	}
	cfg := opts.Swarm
	cfg.Notifier = p.notifier
	cfg.Progress = opts.Progress
	res, err := p2p.Fetch(ctx, p.Host, s, m, id, peers, cfg)
	sum := &FetchSummary{Name: m.Name, CID: id.String(), Peers: map[string]int64{}, Manifest: m}
	if res != nil {
		sum.ChunksTotal, sum.ChunksPresent, sum.ChunksFetched = res.ChunksTotal, res.ChunksPresent, res.ChunksFetched
		sum.BytesFetched, sum.Duplicates = res.BytesFetched, res.Duplicates
		for pid, st := range res.Peers {
			sum.Peers[pid.String()] = st.WireBytes
			if st.Banned {
				sum.Banned = append(sum.Banned, pid.String())
			}
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	if err != nil {
		if len(sum.Banned) > 0 && errors.Is(err, p2p.ErrNoSource) {
			// What is missing, peers had; they sent it corrupt.
			return sum, fmt.Errorf("fetch %s: %d peers sent chunks that failed verification and were banned: %w: %w", m.Name, len(sum.Banned), store.ErrCorrupt, err)
		}
		return sum, fmt.Errorf("fetch %s: %w", m.Name, err)
	}
	// Chunk names durable, then the pin, then the envelope: the same order
	// as publishing, for the same reason.
	if err := p.Store.Sync(ctx); err != nil {
		return sum, err
	}
	p.dropping.RLock()
	err = p.Store.Pin(ctx, m.Name, ids)
	if err == nil {
		err = p.Catalog.Save(m.Name, envelope)
	}
	p.dropping.RUnlock()
	if err != nil {
		return sum, err
	}
	sum.Seconds = time.Since(start).Seconds()
	return sum, nil
}

// dropChunks lets go of the chunks of release name, whose distinct chunks
// are ids: it unpins name, if its pin still lists ids (a fetch of another
// version may have pinned the name since), and deletes each chunk of ids
// that no other pin lists and no fetch under way needs. It reports whether
// it unpinned name, and the chunks and stored bytes it deleted. The
// envelope stays in the catalog: the release's manifest still says where
// its chunks lie in its installed files.
func (p *Peer) dropChunks(ctx context.Context, name string, ids []cid.Cid) (unpinned bool, chunks int, bytes int64, err error) {
	p.dropping.Lock()
	defer p.dropping.Unlock()
	pins, err := p.Store.Pins(ctx)
	if err != nil {
		return false, 0, 0, err
	}
	pinned, ok := pins[name]
	if !ok || !sameChunks(pinned, ids) {
		return false, 0, 0, nil
	}
	if err := p.Store.Unpin(ctx, name); err != nil {
		return false, 0, 0, err
	}
	keep := map[cid.Cid]bool{}
	for other, pids := range pins {
		if other == name {
			continue
		}
		for _, id := range pids {
			keep[id] = true
		}
	}
	p.mu.Lock()
	for _, r := range p.fetching {
		for _, id := range r.chunks {
			keep[id] = true
		}
	}
	p.mu.Unlock()
	for _, id := range ids {
		if keep[id] {
			continue
		}
		info, err := p.Store.Stat(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return true, chunks, bytes, err
		}
		if err := p.Store.Delete(ctx, id); err != nil {
			return true, chunks, bytes, err
		}
		chunks++
		bytes += info.StoredSize
	}
	return true, chunks, bytes, p.Store.Sync(ctx)
}

// sameChunks reports whether a and b list the same chunks.
func sameChunks(a, b []cid.Cid) bool {
	if len(a) != len(b) {
		return false
	}
	set := make(map[cid.Cid]bool, len(a))
	for _, id := range a {
		set[id] = true
	}
	for _, id := range b {
		if !set[id] {
			return false
		}
	}
	return true
}

// fetchEnvelope asks peers in turn for ref's envelope until one verifies.
func (p *Peer) fetchEnvelope(ctx context.Context, root *manifest.Root, ref string, peers []peer.ID, now time.Time) ([]byte, *manifest.Manifest, cid.Cid, error) {
	wantID, byCID := cid.Undef, false
	if c, err := cid.Decode(ref); err == nil {
		wantID, byCID = c, true
	}
	client := &p2p.Client{Host: p.Host}
	var errs []error
	for _, from := range peers {
		envelope, err := client.GetEnvelope(ctx, from, ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, id, err := root.VerifyManifest(envelope, now)
		if err != nil {
			// A peer handing out envelopes that do not verify is either
			// behind on trust or lying; either way, try the next.
			errs = append(errs, fmt.Errorf("envelope of %s from %s: %w", ref, from, err))
			continue
		}
		if (byCID && !id.Equals(wantID)) || (!byCID && m.Name != ref) {
			errs = append(errs, fmt.Errorf("%s answered %s with %s (%s): %w", from, ref, m.Name, id, manifest.ErrTampered))
			continue
		}
		held, err := p.Catalog.Get(m.Name)
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
