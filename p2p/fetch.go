package p2p

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/filecoin-project/go-clock"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// The swarm fetcher is in four files: this one holds the API and the loop,
// fetch_events.go the events the loop applies, fetch_policy.go the rules that
// choose which chunk to ask of which peer, and fetch_rate.go the rate each
// peer's window follows. docs/decisions/0020 to 0029 record how its numbers
// were chosen.

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
	// a long link the window grows until the pipe is full
	// (docs/decisions/0021).
	QueueTime time.Duration
	// StallTimeout is how long a peer with chunks requested may send no
	// byte on any of its request streams before they are abandoned and
	// their chunks go to other peers, which counts as one failure (default
	// 15 s). It is the peer that stalls, not a stream: its streams share
	// its connection, where one stream's chunks queue behind another's
	// (docs/decisions/0024).
	StallTimeout time.Duration
	// MaxFailures is how many times in a row a peer's requests may fail
	// or stall before the fetch stops using it (default 3).
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
	// fetched from the origin again, except in the last batch.
	Costly func(peer.ID) bool
	// Share, if it names more than this host, makes this fetch one of
	// several splitting the release between them, such as the proxies of
	// sibling sites: the chunks, sorted by CID, are cut into as many equal
	// parts as Share has peers, and a Costly peer is asked only for this
	// host's part, for the part of a peer that is gone, or for any part
	// once the peers have announced nothing new for ShareWait. Ties in
	// rarity are broken in that order, starting at this host's part
	// (docs/decisions/0029).
	Share []peer.ID
	// ShareWait is how long sharing peers may stay silent before the
	// Costly peers are asked for their parts (default 2 s).
	ShareWait time.Duration
	// NoEndgame turns off duplicate requests at the end, for links where a
	// duplicate costs more than a slow tail, such as a WAN
	// (docs/decisions/0027).
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
	// Clock, if set, is what the fetch reads and waits on for its
	// timeouts (stall, idle, ShareWait), its retry backoff and its rate
	// samples; nil is the real clock. The streams' socket deadlines stay
	// on the real clock, as a backstop well beyond StallTimeout.
	Clock clock.Clock
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
// disk store's group commit makes many durable per flush
// (docs/decisions/0010).
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
// peer that stalls is dropped after MaxFailures and its chunks go elsewhere.
// Every chunk is durable once stored, so a fetch that is stopped and started
// again fetches only what is still missing.
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

// haveRetries is how often a peer whose have subscription failed to open is
// tried again, after haveRetryDelay, then twice that, and so on
// (docs/decisions/0025).
const (
	haveRetries    = 3
	haveRetryDelay = time.Second
)

// minStallBackstop is the shortest real-time deadline on a request stream.
// The fetch detects stalls on its own clock, which a test may hold still;
// the socket deadline only catches what that misses and must not pre-empt it.
const minStallBackstop = 30 * time.Second

type fetchPeer struct {
	id       peer.ID
	have     Bitmap // nil until the have subscription opens
	sub      *HaveSubscription
	inflight int          // chunks requested and not yet answered
	streams  int          // request streams open, at most maxStreamsPerPeer
	asked    map[int]bool // chunks requested from this peer and not yet answered
	window   int          // chunks allowed in flight
	meter    rateMeter
	failures int // request streams failed, or stalls, in a row
	// The goroutines reading the peer's chunk streams keep heard, owed and
	// storeWaits; every other field is the fetch goroutine's.
	heard      atomic.Int64 // when a byte last arrived, as time since the fetch began
	owed       atomic.Int32 // chunks requested whose frames have not arrived
	storeWaits atomic.Int32 // streams waiting for a store writer, not for the peer
	// busySince is when the peer last went from owing nothing to owing a
	// chunk, or was last found stalled: it is not stalled before it has
	// had StallTimeout to answer.
	busySince time.Duration
	ctx       context.Context // ends when the peer is dropped
	cancel    func()          // cancels its streams
	// reqCtx ends the peer's request streams: when the peer is dropped,
	// or when it stalls, after which a fresh one is made.
	reqCtx    context.Context
	reqCancel func()
	stats     *PeerStats
	gone      bool // banned or dropped: never asked again, unless retryAt is set
	costly    bool // asked only for what no other usable peer has
	// retryAt, if set, is when a peer dropped because its have
	// subscription did not open is subscribed to again; haveFailures
	// counts those failures.
	retryAt      time.Time
	haveFailures int
}

type fetch struct {
	chunkTable
	h          host.Host
	s          FetchStore
	cfg        FetchConfig
	clock      clock.Clock
	epoch      time.Time // when the fetch began, on clock
	client     *Client   // for chunks: tells heard of every read
	haveClient *Client   // for have subscriptions
	manifestID cid.Cid
	ids        []cid.Cid
	sizes      []int64
	cheapNews  time.Time // when a peer that is not Costly last announced a chunk
	lastNews   time.Time
	bytesTotal int64
	bytesDone  int64
	peers      map[peer.ID]*fetchPeer
	order      []*fetchPeer
	// readers is a copy of peers for the goroutines reading chunk streams,
	// replaced, never changed, when peers join.
	readers atomic.Pointer[map[peer.ID]*fetchPeer]
	events  chan fetchEvent
	wg      sync.WaitGroup
	res     FetchResult
	rng     *rand.Rand
	writers chan struct{} // a slot per chunk being stored
	picks   []int         // scratch for choosing a batch
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
	cfg.ShareWait = orDefault(cfg.ShareWait, 2*time.Second)
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 3
	}
	if cfg.StoreWriters <= 0 {
		cfg.StoreWriters = DefaultStoreWriters
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.New()
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
	backstop := max(4*cfg.StallTimeout, minStallBackstop)
	f := &fetch{
		chunkTable: chunkTable{
			state:      make([]uint8, len(ids)),
			copies:     make([]uint8, len(ids)),
			avail:      make([]int, len(ids)),
			cheapAvail: make([]int, len(ids)),
			pendingPos: make([]int, len(ids)),
			batchSize:  cfg.BatchSize,
		},
		h:     h,
		s:     s,
		cfg:   cfg,
		clock: cfg.Clock,
		epoch: cfg.Clock.Now(),
		// The loop finds stalled peers; the stream deadlines are only a
		// backstop. A whole chunk may take far longer than the stall
		// timeout where dozens of nodes share a thin link, so the bound
		// on one chunk only stops a peer that trickles forever
		// (docs/decisions/0024).
		client:     &Client{Host: h, IdleTimeout: backstop, ChunkTimeout: max(backstop, defaultChunkTimeout), Limiter: cfg.Limiter},
		haveClient: &Client{Host: h, IdleTimeout: cfg.StallTimeout},
		manifestID: manifestID,
		ids:        ids,
		sizes:      make([]int64, len(ids)),
		peers:      make(map[peer.ID]*fetchPeer),
		events:     make(chan fetchEvent, 256),
		rng:        rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		writers:    make(chan struct{}, cfg.StoreWriters),
		res:        FetchResult{ChunksTotal: len(ids), Peers: make(map[peer.ID]*PeerStats)},
	}
	f.client.OnRead = f.heard
	for i, id := range ids {
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
	f.rank, f.share.owner = chunkRanks(ids, h.ID(), cfg.Share, f.rng)
	if f.share.owner != nil {
		f.share.me = slices.Index(cfg.Share, h.ID())
		f.share.gone = make([]bool, len(cfg.Share))
	}
	for _, p := range peers {
		f.addPeer(p)
	}
	f.publishPeers()
	return f, nil
}

// addPeer adds p to the fetch and returns it, or returns nil if p is this
// host or already known. The caller then calls publishPeers.
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

// publishPeers hands the goroutines reading chunk streams the peers known
// now. They get a copy because peers changes as peers join.
func (f *fetch) publishPeers() {
	readers := maps.Clone(f.peers)
	f.readers.Store(&readers)
}

// heard records that bytes arrived from p. The fetch's Client calls it on
// every read of a chunk stream, so it takes no lock and allocates nothing.
func (f *fetch) heard(p peer.ID, _ int) {
	if fp := (*f.readers.Load())[p]; fp != nil {
		fp.heard.Store(int64(f.sinceEpoch()))
	}
}

// sinceEpoch is the fetch clock's time since the fetch began, the unit of
// fetchPeer.heard and busySince.
func (f *fetch) sinceEpoch() time.Duration {
	return f.clock.Since(f.epoch)
}

// subscribe opens p's have subscription in the background.
func (f *fetch) subscribe(ctx context.Context, p *fetchPeer) {
	p.ctx, p.cancel = context.WithCancel(ctx)
	p.reqCtx, p.reqCancel = context.WithCancel(p.ctx)
	f.goSend(func() fetchEvent {
		sub, err := f.haveClient.OpenHave(p.ctx, p.id, f.manifestID, len(f.ids))
		if err != nil {
			return haveFailed{peer: p.id, err: err}
		}
		return haveOpened{sub}
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
	f.lastNews = f.clock.Now()
	f.cheapNews = f.lastNews
	// The tick is when the loop looks at the clock: for stalls, the idle
	// timeout, ShareWait and peers to subscribe to again.
	tick := f.clock.Ticker(min(f.cfg.IdleTimeout/4, f.cfg.ShareWait, f.cfg.StallTimeout/4))
	defer tick.Stop()
	for f.remaining > 0 {
		select {
		case <-ctx.Done():
			return &f.res, ctx.Err()
		case ev := <-f.events:
			if err := ev.apply(ctx, f); err != nil {
				return &f.res, err
			}
		case peers := <-f.cfg.MorePeers:
			var added []*fetchPeer
			for _, id := range peers {
				if p := f.addPeer(id); p != nil {
					added = append(added, p)
				}
			}
			f.publishPeers()
			for _, p := range added {
				f.subscribe(ctx, p)
			}
		case <-tick.C:
			f.checkStalls()
			f.resubscribe(ctx)
		}
		f.schedule()
		if err := f.checkProgress(); err != nil {
			return &f.res, err
		}
	}
	return &f.res, nil
}

// resubscribe subscribes again to the peers whose retry time has come.
func (f *fetch) resubscribe(ctx context.Context) {
	now := f.clock.Now()
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

// checkStalls finds the peers that owe chunks and sent no byte for
// StallTimeout, and gives up on their requests. A peer is not stalled while
// one of its streams waits for a store writer: then the fetch is behind, and
// the peer cannot send.
func (f *fetch) checkStalls() {
	now := f.sinceEpoch()
	for _, p := range f.order {
		if p.gone || p.owed.Load() == 0 || p.storeWaits.Load() > 0 {
			continue
		}
		if now-max(time.Duration(p.heard.Load()), p.busySince) >= f.cfg.StallTimeout {
			f.stalled(p, now)
		}
	}
}

// stalled cancels p's request streams, whose chunks return to pending as
// they end, and counts one failure for them all: p's window halves, and
// after MaxFailures in a row p is dropped.
func (f *fetch) stalled(p *fetchPeer, now time.Duration) {
	p.reqCancel()
	p.reqCtx, p.reqCancel = context.WithCancel(p.ctx)
	// The cancelled requests count as in flight until their streams end:
	// they must not be found stalled again meanwhile.
	p.busySince = now
	p.failures++
	p.window = max(f.floorWindow(p), p.window/2)
	if p.failures >= f.cfg.MaxFailures {
		f.drop(p, fmt.Sprintf("stalled: no byte for %s with %d chunks requested", f.cfg.StallTimeout, p.owed.Load()))
	}
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
	if f.clock.Since(f.lastNews) > f.cfg.IdleTimeout {
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

// schedule gives every usable peer with room in its window a batch of the
// rarest missing chunks it has, and in the endgame duplicates of chunks in
// flight elsewhere.
func (f *fetch) schedule() {
	if f.hasCostly && f.share.owner != nil {
		f.share.open = f.clock.Since(f.cheapNews) > f.cfg.ShareWait
		for k, id := range f.cfg.Share {
			o := f.peers[id]
			f.share.gone[k] = o == nil || o.gone
		}
	}
	for progress := true; progress; {
		progress = false
		for _, p := range f.order {
			if p.gone || p.have == nil || p.streams >= maxStreamsPerPeer {
				continue
			}
			n := f.room(p.window, p.inflight, p.costly)
			if n == 0 {
				continue
			}
			f.picks = f.pickRarest(f.picks, n, p.have, p.costly)
			for _, i := range f.picks {
				f.take(i)
			}
			if len(f.picks) == 0 && !f.cfg.NoEndgame && !p.costly && f.endgame() {
				f.picks = f.pickEndgame(f.picks, min(f.batchSize, p.window-p.inflight), p.have, p.asked)
			}
			if len(f.picks) == 0 {
				continue
			}
			f.request(p, slices.Clone(f.picks))
			progress = true
		}
	}
}

// request sends one batch to p in its own goroutine.
func (f *fetch) request(p *fetchPeer, indexes []int) {
	b := &batch{peer: p.id, indexes: indexes, results: make([]chunkResult, len(indexes))}
	ids := make([]cid.Cid, len(indexes))
	for k, i := range indexes {
		ids[k] = f.ids[i]
		f.copies[i]++
		f.state[i] = requested
		p.asked[i] = true
	}
	if n := int32(len(indexes)); p.owed.Add(n) == n {
		p.busySince = f.sinceEpoch()
	}
	p.inflight += len(indexes)
	p.streams++
	pctx, rctx := p.ctx, p.reqCtx
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.getBatch(pctx, rctx, p, b, ids)
	}()
}

// batch is one request stream to a peer. The events about its chunks point
// into it, so that sending them allocates nothing.
type batch struct {
	peer      peer.ID
	indexes   []int         // the chunks asked for, in request order
	results   []chunkResult // what became of each chunk answered
	err       error         // why the stream failed, if it did
	cancelled bool          // the fetch cut the stream: the peer stalled or was dropped, or the fetch ended
	puts      sync.WaitGroup
	bad       atomic.Bool // a chunk failed verification
}

// chunkResult is what became of one chunk of a batch.
type chunkResult struct {
	b    *batch
	i    int   // the chunk
	wire int64 // frame bytes received
	err  error
}

// getBatch runs b's request stream to p on rctx, and stores what it
// receives on pctx, so that chunks already received are stored even if p
// stalls. Each chunk is handed to a store writer as it arrives, so the
// stream goes on while earlier chunks are verified and wait for the store to
// make them durable; the batch reports done only after its writers have, so
// no chunk is both stored and asked again. Of p, it uses only the id and the
// fields the reading goroutines keep.
func (f *fetch) getBatch(pctx, rctx context.Context, p *fetchPeer, b *batch, ids []cid.Cid) {
	answered := 0
	err := f.client.GetChunks(rctx, p.id, ids, func(id cid.Cid, frame []byte) error {
		p.owed.Add(-1)
		r := &b.results[answered]
		r.b, r.i = b, b.indexes[answered]
		answered++
		if b.bad.Load() {
			return errBadChunk
		}
		if frame == nil {
			f.events <- chunkAbsent{r}
			return nil
		}
		buf := frameBufs.Get().(*[]byte)
		*buf = append((*buf)[:0], frame...)
		if !f.awaitWriter(rctx, p) {
			frameBufs.Put(buf)
			return rctx.Err()
		}
		b.puts.Add(1)
		go func() {
			defer b.puts.Done()
			ev := f.store(pctx, r, id, *buf)
			<-f.writers
			frameBufs.Put(buf)
			f.events <- ev
		}()
		return nil
	})
	p.owed.Add(int32(answered - len(ids)))
	b.puts.Wait()
	if b.bad.Load() && err == nil {
		err = errBadChunk
	}
	b.err, b.cancelled = err, err != nil && rctx.Err() != nil
	f.events <- batchDone{b}
}

// awaitWriter takes a store writer's slot for a chunk received from p, and
// reports false if rctx ends first. While it waits, p waits on the fetch, not
// the fetch on p, so p's stall clock starts again once the wait is over.
func (f *fetch) awaitWriter(rctx context.Context, p *fetchPeer) bool {
	select {
	case f.writers <- struct{}{}:
		return true
	default:
	}
	p.storeWaits.Add(1)
	ok := true
	select {
	case f.writers <- struct{}{}:
	case <-rctx.Done():
		ok = false
	}
	p.heard.Store(int64(f.sinceEpoch()))
	p.storeWaits.Add(-1)
	return ok
}

// store verifies and stores one chunk of r's batch and returns the event
// that says how it went.
func (f *fetch) store(ctx context.Context, r *chunkResult, id cid.Cid, frame []byte) fetchEvent {
	var err error
	if f.cfg.Content != nil {
		err = f.s.(store.ContentFramePutter).PutFrameContent(ctx, id, frame, f.cfg.Content)
	} else {
		err = f.s.PutFrame(ctx, id, frame)
	}
	switch {
	case err == nil:
		f.cfg.Notifier.Stored(id)
		r.wire = int64(len(frame))
		return chunkStored{r}
	case errors.Is(err, store.ErrMismatch), errors.Is(err, store.ErrCorrupt):
		r.b.bad.Store(true)
		r.wire, r.err = int64(len(frame)), err
		return chunkRejected{r}
	case ctx.Err() != nil:
		// The peer was dropped or the fetch ended: the chunk goes back
		// to pending with the rest of the batch.
		return chunkUnstored{r}
	default:
		// The store itself failed (a full disk, say): no peer can help.
		r.err = fmt.Errorf("store chunk %s: %w", id, err)
		return storeFailed{r}
	}
}
