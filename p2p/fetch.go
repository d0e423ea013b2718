package p2p

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// FetchStore is what the swarm fetcher needs of a chunk store.
type FetchStore interface {
	store.Haser
	store.FramePutter
}

// FetchConfig tunes Fetch. The zero value is ready to use.
type FetchConfig struct {
	// Notifier, if set, is told of every chunk stored, so that this node
	// serves what it has to its own peers while it is still downloading.
	Notifier *HaveNotifier
	// BatchSize is how many chunks one request stream asks for (default
	// 16, at most MaxChunkBatch).
	BatchSize int
	// InitialWindow is how many chunks may be in flight to a peer before
	// its rate is known (default half a batch). The window then follows
	// the peer's rate, down to a single chunk: a peer that shares a thin
	// link with many others gets few chunks at a time, so that each
	// arrives within the stall timeout instead of waiting behind a long
	// batch.
	InitialWindow int
	// MaxWindow caps the chunks in flight to one peer (default 1024).
	MaxWindow int
	// QueueTime is how much of a peer's measured throughput, in bytes on
	// the wire, is kept in flight (default 500 ms). The window follows the
	// rate, so throughput is never capped at window × chunk size / RTT: on
	// a long link the window grows until the pipe is full. The 3 sites ×
	// 5 nodes demo took 1.19-1.22 × its lower bound with 500 ms and
	// 1.26-1.27 × with 250 ms.
	QueueTime time.Duration
	// StallTimeout abandons a request stream that delivers no byte for
	// this long; its chunks go to other peers (default 15 s).
	StallTimeout time.Duration
	// MaxFailures is how many request streams to a peer may fail in a row
	// before the fetch stops using it (default 3).
	MaxFailures int
	// IdleTimeout ends the fetch with an error when chunks are missing, no
	// request is in flight and no peer announced anything new for this
	// long (default 60 s).
	IdleTimeout time.Duration
	// StoreWriters is how many received chunks may be being verified and
	// stored at once (default DefaultStoreWriters). It bounds the memory
	// of chunks received and not yet stored.
	StoreWriters int
	// Progress, if set, is called from the fetch's own goroutine after
	// every chunk received; it must return quickly.
	Progress func(FetchProgress)
	// Costly, if set, marks peers to ask only for chunks that no other
	// usable peer has, such as a proxy's upstream across the WAN beside
	// the proxies of sibling sites: what a sibling already holds is not
	// fetched from the origin again, except in the last batch (see tail).
	Costly func(peer.ID) bool
	// Share, if it names more than this host, makes this fetch one of
	// several splitting the release between them, such as the proxies of
	// sibling sites: the chunks, sorted by CID, are cut into as many equal
	// parts as Share has peers, and a Costly peer is asked only for this
	// host's part, for the part of a peer that is gone, or for any part
	// once the peers have announced nothing new for ShareWait. Ties in
	// rarity are broken in that order, starting at this host's part.
	Share []peer.ID
	// ShareWait is how long sharing peers may stay silent before the
	// Costly peers are asked for their parts (default 2 s).
	ShareWait time.Duration
	// NoEndgame turns off duplicate requests at the end, for links where a
	// duplicate costs more than a slow tail, such as a WAN.
	NoEndgame bool
	// Limiter, if set, paces what the fetch receives.
	Limiter *RateLimiter
	// MorePeers, if set, delivers peers that join while the fetch runs,
	// such as site peers a tracker names after the fetch started.
	MorePeers <-chan []peer.ID
	// Content, if set, is handed the verified content of every chunk the
	// fetch stores, while the store still holds it, such as an assembly
	// staging the release's files as they arrive. The store must then be a
	// store.ContentFramePutter. Content is called from several goroutines
	// at once.
	Content func(id cid.Cid, content []byte)
}

// FetchProgress is a snapshot of a fetch, for progress bars and status.
type FetchProgress struct {
	ChunksTotal, ChunksDone int
	BytesTotal, BytesDone   int64 // uncompressed bytes of the release's distinct chunks
	WireBytes               int64 // frame bytes received so far
	Peer                    peer.ID
	PeerWireBytes           int64 // frame bytes received from Peer so far
}

// PeerStats is what one peer contributed to a fetch.
type PeerStats struct {
	Chunks    int    // chunks it sent that were stored
	WireBytes int64  // frame bytes received from it, good or bad
	Banned    bool   // it sent a chunk that failed verification
	Dropped   string // why the fetch stopped using it, if it did
}

// FetchResult sums up a fetch.
type FetchResult struct {
	ChunksTotal   int   // distinct chunks of the release
	ChunksPresent int   // already stored when the fetch started
	ChunksFetched int   // received, verified and stored by this fetch
	BytesFetched  int64 // frame bytes received, including duplicates and rejects
	Duplicates    int   // chunks received twice in the endgame
	Peers         map[peer.ID]*PeerStats
}

// DefaultStoreWriters keeps enough chunks on their way into the store that a
// disk store's group commit makes many durable per flush: with 16 writers a
// flush of this project's disks took ~1 MiB at a time (~84 MB/s), with 64
// several times that.
const DefaultStoreWriters = 64

// ErrNoSource means chunks are missing that no usable peer has.
var ErrNoSource = errors.New("no peer has the missing chunks")

// errBadChunk stops a request stream whose peer sent a chunk that failed
// verification.
var errBadChunk = errors.New("chunk failed verification")

// Fetch downloads the chunks of m that s lacks from peers, and stores each
// after verifying it. manifestID names m on the have protocol. Chunks are
// requested rarest first across the peers that have them, several request
// streams in flight per peer with a window that follows each peer's
// throughput, so faster peers get more work; once every missing chunk is
// requested, the last ones are requested again from other peers (endgame). A
// peer that sends a chunk that fails verification is banned for this fetch; a
// peer whose streams stall is dropped after MaxFailures and its chunks go
// elsewhere. Every chunk is durable once stored, so a fetch that is stopped
// and started again fetches only what is still missing.
//
// The caller adds the peers' addresses to h's peerstore; a peer that cannot
// be reached is tried again haveRetries times with a growing backoff, then
// recorded in the result and skipped.
func Fetch(ctx context.Context, h host.Host, s FetchStore, m *manifest.Manifest, manifestID cid.Cid, peers []peer.ID, cfg FetchConfig) (*FetchResult, error) {
	f, err := newFetch(ctx, h, s, m, manifestID, peers, cfg)
	if err != nil {
		return nil, err
	}
	return f.run(ctx)
}

// chunk states
const (
	missing = iota
	requested
	stored
)

type fetchPeer struct {
	id       peer.ID
	have     Bitmap // nil until the have subscription opens
	sub      *HaveSubscription
	inflight int             // chunks requested and not yet answered
	asked    map[int]bool    // chunks requested from this peer and not yet answered
	window   int             // chunks allowed in flight
	rate     float64         // EWMA of bytes/s
	sample   int64           // bytes since sampleAt
	sampleAt time.Time       // start of the current rate sample
	failures int             // request streams failed in a row
	ctx      context.Context // ends when the peer is dropped
	cancel   func()          // cancels its streams
	stats    *PeerStats
	gone     bool // banned or dropped: never asked again, unless retryAt is set
	costly   bool // asked only for what no other usable peer has
	// retryAt, if set, is when a peer dropped because its have
	// subscription did not open is subscribed to again; haveFailures
	// counts those failures.
	retryAt      time.Time
	haveFailures int
}

// fetchEvent is anything that changes the fetch's state; the fetch's own
// goroutine applies events one at a time, so the state needs no lock.
type fetchEvent struct {
	peer    peer.ID
	kind    int
	sub     *HaveSubscription // haveOpened
	indexes []int             // haveUpdate: chunks announced; batchDone: chunks not answered
	index   int               // chunkStored, chunkRejected, chunkAbsent
	wire    int64
	err     error
	dup     bool
}

const (
	haveOpened = iota
	haveFailed
	haveUpdate
	haveEnded
	chunkStored
	chunkRejected
	chunkAbsent
	chunkUnstored
	storeFailed
	batchDone
)

type fetch struct {
	h          host.Host
	s          FetchStore
	cfg        FetchConfig
	client     *Client
	manifestID cid.Cid
	ids        []cid.Cid
	sizes      []int64
	index      map[cid.Cid]int
	state      []uint8
	copies     []uint8   // requests in flight per chunk
	avail      []int     // how many usable peers have each chunk
	cheapAvail []int     // how many of those are not Costly
	rank       []int     // tie-break order among equally rare chunks
	owner      []peer.ID // with a Share: the peer whose part each chunk is in
	cheapNews  time.Time // when a peer that is not Costly last announced a chunk
	hasCostly  bool      // a peer is Costly
	pending    []int     // missing chunks not in flight, in random order
	pendingPos []int     // position of each chunk in pending, or -1
	remaining  int
	bytesTotal int64
	bytesDone  int64
	peers      map[peer.ID]*fetchPeer
	order      []*fetchPeer
	events     chan fetchEvent
	wg         sync.WaitGroup
	res        FetchResult
	lastNews   time.Time
	rng        *rand.Rand
	writers    chan struct{} // a slot per chunk being stored
	// framesReceived counts the frames whose bytes res.BytesFetched sums.
	framesReceived int
}

func newFetch(ctx context.Context, h host.Host, s FetchStore, m *manifest.Manifest, manifestID cid.Cid, peers []peer.ID, cfg FetchConfig) (*fetch, error) {
	if _, ok := s.(store.ContentFramePutter); cfg.Content != nil && !ok {
		return nil, fmt.Errorf("fetch %s: the store (%T) cannot hand over chunk content", m.Name, s)
	}
	if cfg.BatchSize <= 0 || cfg.BatchSize > MaxChunkBatch {
		cfg.BatchSize = min(16, MaxChunkBatch)
	}
	if cfg.InitialWindow <= 0 {
		cfg.InitialWindow = max(minWindow, cfg.BatchSize/2)
	}
	if cfg.MaxWindow <= 0 {
		cfg.MaxWindow = 1024
	}
	cfg.MaxWindow = max(cfg.MaxWindow, cfg.InitialWindow)
	cfg.QueueTime = orDefault(cfg.QueueTime, 500*time.Millisecond)
	cfg.StallTimeout = orDefault(cfg.StallTimeout, 15*time.Second)
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, time.Minute)
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 3
	}
	if cfg.StoreWriters <= 0 {
		cfg.StoreWriters = DefaultStoreWriters
	}
	ids := m.ChunkIDs()
	if len(ids) > MaxReleaseChunks {
		return nil, fmt.Errorf("release %s has %d chunks, more than the have protocol's %d", m.Name, len(ids), MaxReleaseChunks)
	}
	sizes := make(map[cid.Cid]int64, len(ids))
	for _, file := range m.Files {
		for _, c := range file.Chunks {
			sizes[c.CID] = int64(c.Size)
		}
	}
	f := &fetch{
		h:   h,
		s:   s,
		cfg: cfg,
		// A stream stalls when no byte arrives for StallTimeout. A whole
		// chunk may take far longer where dozens of nodes share a thin
		// link (a 256 KiB chunk at a 5 KB/s share is 52 s), so the bound
		// on one chunk only stops a peer that trickles forever.
		client:     &Client{Host: h, IdleTimeout: cfg.StallTimeout, ChunkTimeout: max(cfg.StallTimeout, defaultChunkTimeout), Limiter: cfg.Limiter},
		manifestID: manifestID,
		ids:        ids,
		sizes:      make([]int64, len(ids)),
		index:      make(map[cid.Cid]int, len(ids)),
		state:      make([]uint8, len(ids)),
		copies:     make([]uint8, len(ids)),
		avail:      make([]int, len(ids)),
		cheapAvail: make([]int, len(ids)),
		pendingPos: make([]int, len(ids)),
		peers:      make(map[peer.ID]*fetchPeer),
		events:     make(chan fetchEvent, 256),
		rng:        rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		writers:    make(chan struct{}, cfg.StoreWriters),
		res:        FetchResult{ChunksTotal: len(ids), Peers: make(map[peer.ID]*PeerStats)},
	}
	for i, id := range ids {
		f.index[id] = i
		f.sizes[i] = sizes[id]
		f.bytesTotal += sizes[id]
		f.pendingPos[i] = -1
		ok, err := s.Has(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", m.Name, err)
		}
		if ok {
			f.state[i] = stored
			f.res.ChunksPresent++
			f.bytesDone += sizes[id]
			continue
		}
		f.remaining++
		f.pendingPos[i] = len(f.pending)
		f.pending = append(f.pending, i)
	}
	f.rank, f.owner = chunkRanks(ids, h.ID(), cfg.Share, f.rng)
	f.cfg.ShareWait = orDefault(cfg.ShareWait, 2*time.Second)
	for _, p := range peers {
		f.addPeer(p)
	}
	return f, nil
}

// chunkRanks orders the chunks for breaking ties in rarity. By default the
// order is random, which spreads fetchers that start together over different
// chunks, so they have something to trade from the start. With a share, the
// order is the chunks sorted by CID, rotated to start at self's part, and
// owners names the peer whose part each chunk is in.
func chunkRanks(ids []cid.Cid, self peer.ID, share []peer.ID, rng *rand.Rand) (rank []int, owners []peer.ID) {
	n := len(ids)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	me := slices.Index(share, self)
	if len(share) > 1 && me >= 0 {
		sort.Slice(order, func(a, b int) bool { return ids[order[a]].KeyString() < ids[order[b]].KeyString() })
		owners = make([]peer.ID, n)
		for pos, i := range order {
			owners[i] = share[pos*len(share)/n]
		}
		start := me * n / len(share)
		order = append(order[start:], order[:start]...)
	} else {
		rng.Shuffle(n, func(a, b int) { order[a], order[b] = order[b], order[a] })
	}
	rank = make([]int, n)
	for r, i := range order {
		rank[i] = r
	}
	return rank, owners
}

// costlyMay reports whether a Costly peer may be asked for chunk i: no other
// peer has it, and it is this host's part of a share, or its owner is gone,
// or shareOpen (the sharing peers have been silent too long).
func (f *fetch) costlyMay(i int, shareOpen bool) bool {
	if f.cheapAvail[i] > 0 && !f.tail() {
		return false
	}
	if shareOpen || f.owner == nil || f.owner[i] == f.h.ID() {
		return true
	}
	o := f.peers[f.owner[i]]
	return o == nil || o.gone
}

// tail reports whether a fetch with Costly peers is at its last batch:
// then cheap peers get one chunk at a time and Costly peers any chunk, so
// that the last chunks do not wait in a queue at a sibling's WAN uplink,
// shared with every other proxy finishing too, while the upstream is idle.
func (f *fetch) tail() bool {
	return f.hasCostly && f.remaining <= f.cfg.BatchSize
}

// addPeer adds p to the fetch and returns it, or returns nil if p is this
// host or already known.
func (f *fetch) addPeer(p peer.ID) *fetchPeer {
	if p == f.h.ID() || f.peers[p] != nil {
		return nil
	}
	fp := &fetchPeer{id: p, window: f.cfg.InitialWindow, asked: map[int]bool{}, stats: &PeerStats{}}
	fp.costly = f.cfg.Costly != nil && f.cfg.Costly(p)
	f.hasCostly = f.hasCostly || fp.costly
	f.peers[p] = fp
	f.order = append(f.order, fp)
	f.res.Peers[p] = fp.stats
	return fp
}

// subscribe opens p's have subscription in the background.
func (f *fetch) subscribe(ctx context.Context, p *fetchPeer) {
	p.ctx, p.cancel = context.WithCancel(ctx)
	f.goSend(func() fetchEvent {
		sub, err := f.client.OpenHave(p.ctx, p.id, f.manifestID, len(f.ids))
		if err != nil {
			return fetchEvent{peer: p.id, kind: haveFailed, err: err}
		}
		return fetchEvent{peer: p.id, kind: haveOpened, sub: sub}
	})
}

func (f *fetch) run(ctx context.Context) (*FetchResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		for _, p := range f.order {
			if p.sub != nil {
				p.sub.Close()
			}
		}
		// Drain events until every goroutine has ended, so none blocks
		// on a send.
		done := make(chan struct{})
		go func() { f.wg.Wait(); close(done) }()
		for {
			select {
			case <-f.events:
			case <-done:
				return
			}
		}
	}()
	if f.remaining == 0 {
		return &f.res, nil
	}
	if len(f.order) == 0 {
		return &f.res, fmt.Errorf("fetch: no peers given: %w", ErrNoSource)
	}
	for _, p := range f.order {
		f.subscribe(ctx, p)
	}
	f.lastNews = time.Now()
	f.cheapNews = f.lastNews
	idle := time.NewTicker(min(f.cfg.IdleTimeout/4, f.cfg.ShareWait))
	defer idle.Stop()
	for f.remaining > 0 {
		select {
		case <-ctx.Done():
			return &f.res, ctx.Err()
		case ev := <-f.events:
			if err := f.apply(ctx, ev); err != nil {
				return &f.res, err
			}
		case peers := <-f.cfg.MorePeers:
			for _, id := range peers {
				if p := f.addPeer(id); p != nil {
					f.subscribe(ctx, p)
				}
			}
		case <-idle.C:
			f.resubscribe(ctx)
		}
		f.schedule()
		if err := f.checkProgress(); err != nil {
			return &f.res, err
		}
	}
	return &f.res, nil
}

// haveRetries is how often a peer whose have subscription failed to open is
// tried again, after haveRetryDelay, then twice that, and so on.
const (
	haveRetries    = 3
	haveRetryDelay = time.Second
)

// resubscribe subscribes again to the peers whose retry time has come.
func (f *fetch) resubscribe(ctx context.Context) {
	now := time.Now()
	for _, p := range f.order {
		if p.gone && !p.retryAt.IsZero() && now.After(p.retryAt) {
			p.gone, p.retryAt, p.stats.Dropped = false, time.Time{}, ""
			f.subscribe(ctx, p)
		}
	}
}

// goSend runs fn in a goroutine and hands its event to the fetch.
func (f *fetch) goSend(fn func() fetchEvent) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.events <- fn()
	}()
}

// checkProgress fails the fetch when it cannot move: chunks are missing,
// nothing is in flight, no peer is waiting to be subscribed to again, and
// either no usable peer is left or none has said anything new for
// IdleTimeout.
func (f *fetch) checkProgress() error {
	if f.remaining == 0 {
		return nil // done: the last chunk may arrive long after the last news
	}
	usable, waiting := 0, false
	for _, p := range f.order {
		if p.gone {
			waiting = waiting || !p.retryAt.IsZero()
			continue
		}
		usable++
		if p.inflight > 0 || p.have == nil {
			waiting = true
		}
	}
	if waiting {
		return nil
	}
	if usable == 0 {
		return fmt.Errorf("fetch: %d chunks missing and every peer failed (%s): %w", f.remaining, f.peerErrors(), ErrNoSource)
	}
	if time.Since(f.lastNews) > f.cfg.IdleTimeout {
		return fmt.Errorf("fetch: %d chunks missing that none of %d peers has announced for %s: %w", f.remaining, usable, f.cfg.IdleTimeout, ErrNoSource)
	}
	return nil
}

func (f *fetch) peerErrors() string {
	var msgs []string
	for _, p := range f.order {
		if p.stats.Dropped != "" {
			msgs = append(msgs, fmt.Sprintf("%s: %s", p.id.ShortString(), p.stats.Dropped))
		}
	}
	sort.Strings(msgs)
	if len(msgs) > 3 {
		msgs = append(msgs[:3], fmt.Sprintf("and %d more", len(msgs)-3))
	}
	return fmt.Sprint(msgs)
}

func (f *fetch) apply(ctx context.Context, ev fetchEvent) error {
	p := f.peers[ev.peer]
	switch ev.kind {
	case haveOpened:
		if p.gone {
			ev.sub.Close()
			return nil
		}
		p.sub, p.have = ev.sub, ev.sub.Have
		for i := range f.ids {
			if p.have.Has(i) {
				f.counted(p, i, 1)
			}
		}
		f.lastNews = time.Now()
		sub := ev.sub
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			for idx := range sub.Updates {
				f.events <- fetchEvent{peer: sub.Peer, kind: haveUpdate, indexes: idx}
			}
			f.events <- fetchEvent{peer: sub.Peer, kind: haveEnded, err: sub.Err()}
		}()
	case haveFailed:
		f.drop(p, fmt.Sprintf("have: %v", ev.err))
		// Under load a dial's handshake can time out although the peer
		// is well: in a 500-node testnet about 2,000 subscriptions a
		// run failed so. Such a peer is tried again after a backoff.
		if p.haveFailures++; p.haveFailures <= haveRetries && ctx.Err() == nil {
			p.retryAt = time.Now().Add(haveRetryDelay << (p.haveFailures - 1))
		}
	case haveUpdate:
		if p.gone {
			return nil
		}
		for _, i := range ev.indexes {
			if !p.have.Has(i) {
				p.have.Set(i)
				f.counted(p, i, 1)
			}
		}
		f.lastNews = time.Now()
	case haveEnded:
		// The peer stays usable for what it announced; it just tells us
		// nothing new.
	case chunkStored:
		delete(p.asked, ev.index)
		p.inflight--
		p.failures = 0
		f.countWire(p, ev.wire)
		if f.copies[ev.index] > 0 {
			f.copies[ev.index]--
		}
		if f.state[ev.index] == stored {
			f.res.Duplicates++
			return nil
		}
		f.state[ev.index] = stored
		f.remaining--
		f.res.ChunksFetched++
		f.bytesDone += f.sizes[ev.index]
		p.stats.Chunks++
		if f.cfg.Progress != nil {
			f.cfg.Progress(FetchProgress{
				ChunksTotal: len(f.ids), ChunksDone: len(f.ids) - f.remaining,
				BytesTotal: f.bytesTotal, BytesDone: f.bytesDone, WireBytes: f.res.BytesFetched,
				Peer: p.id, PeerWireBytes: p.stats.WireBytes,
			})
		}
	case chunkRejected:
		f.countWire(p, ev.wire)
		if !p.stats.Banned {
			p.stats.Banned = true
			f.drop(p, fmt.Sprintf("banned: %v", ev.err))
			// A peer that lies about content is cut off, not only
			// ignored: its other streams would be wasted reads.
			_ = f.h.Network().ClosePeer(p.id)
		}
	case chunkAbsent:
		// It announced the chunk and then did not have it: ask elsewhere,
		// and not it again.
		delete(p.asked, ev.index)
		p.inflight--
		f.unrequest(ev.index)
		if p.have.Has(ev.index) {
			p.have[ev.index/8] &^= 0x80 >> (ev.index % 8)
			f.counted(p, ev.index, -1)
		}
	case chunkUnstored:
		// Left in p.asked: batchDone returns it to pending.
	case storeFailed:
		return ev.err
	case batchDone:
		for _, i := range ev.indexes {
			if p.asked[i] {
				delete(p.asked, i)
				p.inflight--
				f.unrequest(i)
			}
		}
		if ev.err != nil && !p.gone && ctx.Err() == nil {
			p.failures++
			p.window = max(f.floorWindow(p), p.window/2)
			if p.failures >= f.cfg.MaxFailures {
				f.drop(p, ev.err.Error())
			}
		}
	}
	return nil
}

// counted changes the count of usable peers having chunk i by d, as p
// announces it, turns out not to have it, or is dropped.
func (f *fetch) counted(p *fetchPeer, i, d int) {
	f.avail[i] += d
	if !p.costly {
		f.cheapAvail[i] += d
		if d > 0 {
			f.cheapNews = time.Now()
		}
	}
}

// minWindow is the fewest chunks a peer's window allows in flight while
// they arrive well within the stall timeout: enough to keep the peer busy
// across the round trips between batches.
const minWindow = 4

// floorWindow is the fewest chunks p's window allows in flight: minWindow,
// or fewer, down to one, for a peer so slow that minWindow chunks would take
// more than a quarter of the stall timeout to arrive. A peer's request
// streams share its connection, where one stream's chunks queue behind
// another's; the stream behind would be cut off as stalled while the
// connection is busy, and the bytes already sent for it fetched again. With
// 25 nodes sharing a 1 Mbit/s link, each at 5 KB/s, a floor of 4 chunks lost
// about half the batches that way and moved 2.2 copies per node.
func (f *fetch) floorWindow(p *fetchPeer) int {
	return min(minWindow, max(1, int(p.rate*f.cfg.StallTimeout.Seconds()/4/f.avgFrame())))
}

// countWire counts bytes received from p and updates its rate and window.
func (f *fetch) countWire(p *fetchPeer, n int64) {
	f.res.BytesFetched += n
	f.framesReceived++
	p.stats.WireBytes += n
	p.sample += n
	now := time.Now()
	if p.sampleAt.IsZero() {
		p.sampleAt = now
		return
	}
	if el := now.Sub(p.sampleAt); el >= 50*time.Millisecond {
		r := float64(p.sample) / el.Seconds()
		if p.rate == 0 {
			p.rate = r
		} else {
			p.rate = 0.7*p.rate + 0.3*r
		}
		p.sample, p.sampleAt = 0, now
		w := int(p.rate * f.cfg.QueueTime.Seconds() / f.avgFrame())
		p.window = min(f.cfg.MaxWindow, max(f.floorWindow(p), w))
	}
}

// avgFrame is the mean bytes on the wire per chunk: of the frames received
// so far, or before any, of the chunks uncompressed. Windows count chunks
// and rates count wire bytes; dividing by the uncompressed size made every
// window of a pack compressing 2:1 half as deep as meant.
func (f *fetch) avgFrame() float64 {
	if f.framesReceived > 0 {
		return float64(f.res.BytesFetched) / float64(f.framesReceived)
	}
	return float64(f.bytesTotal) / float64(max(1, len(f.ids)))
}

// unrequest puts a chunk whose request failed back among the pending ones.
func (f *fetch) unrequest(i int) {
	if f.copies[i] > 0 {
		f.copies[i]--
	}
	if f.state[i] == requested && f.copies[i] == 0 {
		f.state[i] = missing
		f.pendingPos[i] = len(f.pending)
		f.pending = append(f.pending, i)
	}
}

// take removes a chunk from pending and marks it requested.
func (f *fetch) take(i int) {
	pos := f.pendingPos[i]
	last := f.pending[len(f.pending)-1]
	f.pending[pos] = last
	f.pendingPos[last] = pos
	f.pending = f.pending[:len(f.pending)-1]
	f.pendingPos[i] = -1
	f.state[i] = requested
}

// drop stops using p: its streams end, its subscription closes and what it
// had stops counting towards availability.
func (f *fetch) drop(p *fetchPeer, why string) {
	if p.gone {
		return
	}
	p.gone = true
	p.stats.Dropped = why
	if p.cancel != nil {
		p.cancel()
	}
	if p.have != nil {
		for i := range f.ids {
			if p.have.Has(i) {
				f.counted(p, i, -1)
			}
		}
	}
	// Its batches report batchDone as they end; their chunks return to
	// pending then.
}

// schedule gives every usable peer with room in its window a batch of the
// rarest missing chunks it has, and in the endgame duplicates of chunks in
// flight elsewhere.
func (f *fetch) schedule() {
	for progress := true; progress; {
		progress = false
		for _, p := range f.order {
			// A batch goes out once a whole batch fits, or, for a
			// window smaller than two batches, once half the window is
			// free: one half travels while the other is asked for, so a
			// small window on a long link is not stop-and-wait.
			window := p.window
			if f.tail() && !p.costly {
				window = 1
			}
			if p.gone || p.have == nil || window-p.inflight < min(f.cfg.BatchSize, f.remaining, max(1, window/2)) {
				continue
			}
			batch := f.pickRarest(p, min(f.cfg.BatchSize, window-p.inflight))
			// Endgame: the last batch's worth of chunks in flight is
			// asked again of idle peers. Begun as soon as nothing was
			// pending, with windows deep enough to hold most of a
			// release, ten fetchers on one LAN each received up to 1.45
			// copies.
			if len(batch) == 0 && len(f.pending) == 0 && f.remaining <= f.cfg.BatchSize && !f.cfg.NoEndgame && !p.costly {
				batch = f.pickEndgame(p, min(f.cfg.BatchSize, p.window-p.inflight))
			}
			if len(batch) == 0 {
				continue
			}
			f.request(p, batch)
			progress = true
		}
	}
}

// pickRarest chooses up to n pending chunks p has, the fewest peers having
// them first, ties in rank order. A costly peer is only given chunks no other
// usable peer has.
func (f *fetch) pickRarest(p *fetchPeer, n int) []int {
	if len(f.pending) == 0 {
		return nil
	}
	less := func(a, b int) bool {
		if f.avail[a] != f.avail[b] {
			return f.avail[a] < f.avail[b]
		}
		return f.rank[a] < f.rank[b]
	}
	shareOpen := p.costly && (f.tail() || time.Since(f.cheapNews) > f.cfg.ShareWait)
	best := make([]int, 0, n)
	for _, i := range f.pending {
		if !p.have.Has(i) || (p.costly && !f.costlyMay(i, shareOpen)) {
			continue
		}
		if len(best) == n && !less(i, best[n-1]) {
			continue
		}
		// Insert in order into the short list.
		pos := sort.Search(len(best), func(j int) bool { return less(i, best[j]) })
		if len(best) < n {
			best = append(best, 0)
		}
		copy(best[pos+1:], best[pos:])
		best[pos] = i
	}
	for _, i := range best {
		f.take(i)
	}
	return best
}

// pickEndgame chooses up to n chunks in flight to other peers that p has,
// least-duplicated first, so the slowest peers do not decide when the fetch
// ends.
func (f *fetch) pickEndgame(p *fetchPeer, n int) []int {
	var picks []int
	for i, st := range f.state {
		if st == requested && f.copies[i] < 2 && !p.asked[i] && p.have.Has(i) {
			picks = append(picks, i)
			if len(picks) == n {
				break
			}
		}
	}
	return picks
}

// request sends one batch to p in its own goroutine. Each chunk is handed to
// a store writer as it arrives, so the stream goes on while earlier chunks are
// verified and wait for the store to make them durable; the batch reports
// done only after its writers have, so no chunk is both stored and asked
// again.
func (f *fetch) request(p *fetchPeer, batch []int) {
	ids := make([]cid.Cid, len(batch))
	for k, i := range batch {
		ids[k] = f.ids[i]
		f.copies[i]++
		f.state[i] = requested
		p.asked[i] = true
	}
	p.inflight += len(batch)
	pctx := p.ctx
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		var puts sync.WaitGroup
		var bad atomic.Bool
		answered := 0
		err := f.client.GetChunks(pctx, p.id, ids, func(id cid.Cid, frame []byte) error {
			i := batch[answered]
			answered++
			if bad.Load() {
				return errBadChunk
			}
			if frame == nil {
				f.events <- fetchEvent{peer: p.id, kind: chunkAbsent, index: i}
				return nil
			}
			buf := frameBufs.Get().(*[]byte)
			*buf = append((*buf)[:0], frame...)
			select {
			case f.writers <- struct{}{}:
			case <-pctx.Done():
				frameBufs.Put(buf)
				return pctx.Err()
			}
			puts.Add(1)
			go func() {
				defer puts.Done()
				ev := f.store(pctx, p.id, i, id, *buf)
				<-f.writers
				frameBufs.Put(buf)
				if ev.kind == chunkRejected {
					bad.Store(true)
				}
				f.events <- ev
			}()
			return nil
		})
		puts.Wait()
		if bad.Load() && err == nil {
			err = errBadChunk
		}
		f.events <- fetchEvent{peer: p.id, kind: batchDone, indexes: batch, err: err}
	}()
}

// store verifies and stores one chunk received from p.
func (f *fetch) store(ctx context.Context, p peer.ID, i int, id cid.Cid, frame []byte) fetchEvent {
	var err error
	if f.cfg.Content != nil {
		err = f.s.(store.ContentFramePutter).PutFrameContent(ctx, id, frame, f.cfg.Content)
	} else {
		err = f.s.PutFrame(ctx, id, frame)
	}
	switch {
	case err == nil:
		f.cfg.Notifier.Stored(id)
		return fetchEvent{peer: p, kind: chunkStored, index: i, wire: int64(len(frame))}
	case errors.Is(err, store.ErrMismatch), errors.Is(err, store.ErrCorrupt):
		return fetchEvent{peer: p, kind: chunkRejected, index: i, wire: int64(len(frame)), err: err}
	case ctx.Err() != nil:
		// The peer was dropped or the fetch ended: the chunk goes back
		// to pending with the rest of the batch.
		return fetchEvent{peer: p, kind: chunkUnstored, index: i}
	default:
		// The store itself failed (a full disk, say): no peer can help.
		return fetchEvent{peer: p, kind: storeFailed, index: i, err: fmt.Errorf("store chunk %s: %w", id, err)}
	}
}
