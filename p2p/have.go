package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// HaveProtocol tells a peer which chunks of a release we hold, then which we
// store, as we store them.
//
// Request, one frame: the manifest CID (uvarint length, binary CID).
// Response, one frame: a status byte; for StatusOK then the release's chunk
// count n (uvarint, at most MaxReleaseChunks) and a Bitmap of ceil(n/8)
// bytes over the release's chunks in Manifest.ChunkIDs order.
// Updates, one frame each, for as long as the stream stays open: a count k
// (uvarint, 1 to MaxHaveUpdate) and k chunk indexes (uvarints < n) that the
// server has stored since.
// The client ends the subscription by closing the stream; anything else it
// sends after the request is a protocol violation.
const HaveProtocol protocol.ID = "/patchctl/have/1.0.0"

const (
	// MaxReleaseChunks bounds the chunks of one release: a manifest of at
	// most manifest.MaxManifestSize (64 MiB) spends over 64 bytes on each
	// chunk reference, so it cannot list more.
	MaxReleaseChunks = 1 << 20
	// MaxHaveUpdate bounds the indexes of one update message; the server
	// splits larger batches.
	MaxHaveUpdate = 4096

	maxHaveRequest  = 1 + maxCIDLen
	maxHaveResponse = 1 + binary.MaxVarintLen32 + (MaxReleaseChunks+7)/8
	maxHaveUpdate   = binary.MaxVarintLen16 + MaxHaveUpdate*binary.MaxVarintLen32
)

// defaultMaxSubscriptions bounds the have streams one node serves at once.
// Each holds a chunk index of its release, about 100 bytes a chunk.
const defaultMaxSubscriptions = 1024

// Releases lists the chunks of the releases a node serves.
type Releases interface {
	// ReleaseChunks returns the distinct chunks of the release whose
	// manifest CID is manifestID, in Manifest.ChunkIDs order. It returns an
	// error wrapping ErrNotFound or store.ErrNotFound for an unknown
	// release.
	ReleaseChunks(ctx context.Context, manifestID cid.Cid) ([]cid.Cid, error)
}

// HaveConfig configures a HaveService. The zero value is valid.
type HaveConfig struct {
	// IdleTimeout bounds how long a handler waits for the request, and for
	// the peer to accept each message it sends (default 30 s). An open
	// subscription on which nothing happens is not idle in this sense.
	IdleTimeout time.Duration
	// MaxSubscriptions bounds the have streams served at once (default
	// 1024); further requests get StatusUnavailable.
	MaxSubscriptions int
	// Logger receives a debug line for every stream reset; nil discards.
	Logger *slog.Logger
}

// HaveService serves HaveProtocol: bitmaps from a Haser, updates from a
// HaveNotifier.
type HaveService struct {
	h        host.Host
	releases Releases
	has      store.Haser
	notifier *HaveNotifier
	cfg      HaveConfig
	g        *Handlers

	mu   sync.Mutex
	open int             // subscriptions being served
	by   map[cid.Cid]int // of them, by manifest CID
}

// NewHaveService registers the have handler on h. Chunks stored after a
// subscription opened are pushed to it when notifier.Stored is called; with
// a nil notifier subscribers get the bitmap and never an update.
func NewHaveService(h host.Host, releases Releases, has store.Haser, notifier *HaveNotifier, cfg HaveConfig) *HaveService {
	if notifier == nil {
		notifier = NewHaveNotifier()
	}
	cfg.IdleTimeout = orDefault(cfg.IdleTimeout, DefaultIdleTimeout)
	if cfg.MaxSubscriptions <= 0 {
		cfg.MaxSubscriptions = defaultMaxSubscriptions
	}
	hs := &HaveService{h: h, releases: releases, has: has, notifier: notifier, cfg: cfg, g: NewHandlers(cfg.Logger), by: map[cid.Cid]int{}}
	h.SetStreamHandler(HaveProtocol, func(s network.Stream) { hs.g.Serve(s, hs.handle) })
	return hs
}

// Close removes the handler and ends every subscription it serves.
func (hs *HaveService) Close() error {
	hs.h.RemoveStreamHandler(HaveProtocol)
	hs.g.Close()
	return nil
}

func (hs *HaveService) reserve(mid cid.Cid) bool {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.open >= hs.cfg.MaxSubscriptions {
		return false
	}
	hs.open++
	hs.by[mid]++
	return true
}

func (hs *HaveService) release(mid cid.Cid) {
	hs.mu.Lock()
	hs.open--
	if hs.by[mid]--; hs.by[mid] <= 0 {
		delete(hs.by, mid)
	}
	hs.mu.Unlock()
}

// Subscribed returns how many peers are subscribed now to what this node
// holds of the release with manifest CID manifestID: peers fetching it that
// may ask this node for its chunks.
func (hs *HaveService) Subscribed(manifestID cid.Cid) int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.by[manifestID]
}

func (hs *HaveService) handle(ctx context.Context, s network.Stream) error {
	ds := &deadlineStream{s: s, idle: hs.cfg.IdleTimeout, hard: time.Now().Add(hs.cfg.IdleTimeout)}
	br := smallReaders.get(ds)
	p, err := ReadFrame(br, maxHaveRequest)
	extra := br.Buffered()
	smallReaders.put(br)
	if err != nil {
		return fmt.Errorf("read have request: %w", err)
	}
	if extra != 0 {
		return fmt.Errorf("%d bytes after the have request: %w", extra, ErrMalformed)
	}
	mid, err := DecodeHaveRequest(p)
	if err != nil {
		return err
	}
	ds.hard = time.Time{}
	bw := smallWriters.get(ds)
	defer smallWriters.put(bw)
	respond := func(st Status) error {
		if err := WriteFrame(bw, EncodeHaveResponse(st, nil, 0)); err != nil {
			return fmt.Errorf("write have response: %w", err)
		}
		return bw.Flush()
	}

	ids, err := hs.releases.ReleaseChunks(ctx, mid)
	switch {
	case errors.Is(err, ErrNotFound) || errors.Is(err, store.ErrNotFound):
		return respond(StatusNotFound)
	case err != nil:
		hs.g.log.Warn("p2p: release chunk lookup failed", "manifest", mid, "err", err)
		return respond(StatusUnavailable)
	case len(ids) > MaxReleaseChunks:
		hs.g.log.Warn("p2p: release has too many chunks to serve", "manifest", mid, "chunks", len(ids))
		return respond(StatusUnavailable)
	}
	if !hs.reserve(mid) {
		return respond(StatusUnavailable)
	}
	defer hs.release(mid)

	index := make(map[cid.Cid]int, len(ids))
	for i, id := range ids {
		if _, dup := index[id]; !dup {
			index[id] = i
		}
	}
	// Subscribe before scanning the store, so that a chunk stored during
	// the scan is in the bitmap or in an update (or in both).
	sub := hs.notifier.subscribe(index, len(ids))
	defer hs.notifier.unsubscribe(sub)
	sent := NewBitmap(len(ids))
	for i, id := range ids {
		ok, err := hs.has.Has(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			hs.g.log.Warn("p2p: has failed", "chunk", id, "err", err)
			return respond(StatusUnavailable)
		}
		if ok {
			sent.Set(i)
		}
	}
	if err := WriteFrame(bw, EncodeHaveResponse(StatusOK, sent, len(ids))); err != nil {
		return fmt.Errorf("write have bitmap: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write have bitmap: %w", err)
	}

	// The client sends nothing more; a read ends when it closes or resets
	// the stream, and CloseRead below interrupts it when we end first.
	if err := s.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	peerDone := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := s.Read(b[:])
		peerDone <- err
	}()
	waited := false
	defer func() {
		if !waited {
			_ = s.CloseRead()
			<-peerDone
		}
	}()

	var idx []int
	var msg []byte
	for {
		select {
		case err := <-peerDone:
			waited = true
			switch {
			case err == io.EOF:
				return nil
			case err == nil:
				return fmt.Errorf("peer sent data on a have subscription: %w", ErrMalformed)
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-sub.signal:
		}
		// Every chunk stored is announced, even one the bitmap or an
		// update announced before: a chunk quarantined since and fetched
		// back must be heard of again by a peer that was told it is
		// absent. A chunk stored during the scan is announced twice, which
		// the subscriber ignores.
		idx = sub.take(idx[:0])
		for len(idx) > 0 {
			k := min(len(idx), MaxHaveUpdate)
			msg = AppendHaveUpdate(msg[:0], idx[:k])
			if err := WriteFrame(bw, msg); err != nil {
				return fmt.Errorf("write have update: %w", err)
			}
			idx = idx[k:]
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write have update: %w", err)
		}
	}
}

// HaveSubscription is a peer's view of one release: the chunks it held when
// the subscription opened, and those it stores while it stays open.
type HaveSubscription struct {
	// Peer is the peer subscribed to.
	Peer peer.ID
	// Have is the peer's bitmap when the subscription opened; the
	// subscription does not change it.
	Have Bitmap
	// Updates delivers the indexes of chunks the peer has stored since,
	// in batches, and is closed when the subscription ends. The receiver
	// must keep draining it: while it does not, the stream stalls and the
	// peer will give up on it.
	Updates <-chan []int

	s       network.Stream
	stop    func() bool
	closing chan struct{}
	once    sync.Once
	done    chan struct{}
	err     error // set before done is closed
}

// OpenHave subscribes to what p holds of the release with manifest CID
// manifestID and nChunks chunks. It returns an error wrapping ErrNotFound if
// p does not serve that release, and one wrapping ErrMalformed, after
// resetting the stream, if p's bitmap or any later update does not fit
// nChunks. The subscription ends when ctx ends, when Close is called, or
// when p ends it.
func (c *Client) OpenHave(ctx context.Context, p peer.ID, manifestID cid.Cid, nChunks int) (*HaveSubscription, error) {
	if nChunks < 0 || nChunks > MaxReleaseChunks {
		return nil, fmt.Errorf("release of %d chunks, want 0 to %d: %w", nChunks, MaxReleaseChunks, ErrMalformed)
	}
	req, err := EncodeHaveRequest(manifestID)
	if err != nil {
		return nil, err
	}
	s, stop, err := c.open(ctx, p, HaveProtocol)
	if err != nil {
		return nil, err
	}
	// The server scans its store for the bitmap: give it the idle timeout
	// for that, then none, since a subscription may rightly be quiet for
	// hours.
	ds := &deadlineStream{s: s, idle: c.idle(), hard: time.Now().Add(c.idle())}
	abort := func(err error) (*HaveSubscription, error) {
		stop()
		return nil, fail(ctx, s, err)
	}
	if err := WriteFrame(ds, req); err != nil {
		return abort(fmt.Errorf("send have request to %s: %w", p, err))
	}
	br := bufio.NewReader(ds)
	resp, err := ReadFrame(br, maxHaveResponse)
	if err != nil {
		return abort(fmt.Errorf("read have bitmap from %s: %w", p, err))
	}
	st, n, have, err := DecodeHaveResponse(resp)
	if err != nil {
		return abort(fmt.Errorf("have bitmap from %s: %w", p, err))
	}
	if err := st.err(); err != nil {
		stop()
		_ = s.Close()
		return nil, fmt.Errorf("have %s from %s: %w", manifestID, p, err)
	}
	if n != nChunks {
		return abort(fmt.Errorf("have bitmap from %s is for %d chunks, the release has %d: %w", p, n, nChunks, ErrMalformed))
	}
	if err := s.SetDeadline(time.Time{}); err != nil {
		return abort(err)
	}
	updates := make(chan []int, 16)
	sub := &HaveSubscription{
		Peer:    p,
		Have:    have,
		Updates: updates,
		s:       s,
		stop:    stop,
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	// From now on the stream may rightly be quiet for hours: no deadlines.
	ds.idle = 0
	ds.hard = time.Time{}
	go sub.run(ctx, br, nChunks, updates)
	return sub, nil
}

// OpenHave is (&Client{Host: h}).OpenHave.
func OpenHave(ctx context.Context, h host.Host, p peer.ID, manifestID cid.Cid, nChunks int) (*HaveSubscription, error) {
	return (&Client{Host: h}).OpenHave(ctx, p, manifestID, nChunks)
}

func (sub *HaveSubscription) run(ctx context.Context, br *bufio.Reader, n int, updates chan<- []int) {
	// done closes before Updates does, so that whoever sees Updates
	// closed finds Err set.
	defer close(updates)
	defer close(sub.done)
	err := sub.receive(ctx, br, n, updates)
	sub.stop()
	if err != nil {
		_ = sub.s.Reset()
	} else {
		_ = sub.s.Close()
	}
	select {
	case <-sub.closing:
		return // ended by Close: not an error
	default:
	}
	if ctx.Err() == nil {
		sub.err = err
	}
}

// receive passes updates on until the subscription ends. It returns nil if
// Close or ctx ended it.
func (sub *HaveSubscription) receive(ctx context.Context, br *bufio.Reader, n int, updates chan<- []int) error {
	for {
		p, err := ReadFrame(br, maxHaveUpdate)
		if err == io.EOF {
			return fmt.Errorf("%s ended the have subscription: %w", sub.Peer, err)
		}
		if err != nil {
			return fmt.Errorf("have subscription to %s: %w", sub.Peer, err)
		}
		idx, err := DecodeHaveUpdate(p, n)
		if err != nil {
			return fmt.Errorf("have update from %s: %w", sub.Peer, err)
		}
		select {
		case updates <- idx:
		case <-sub.closing:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// Err returns why the subscription ended, once Updates is closed: nil if it
// was ended by Close or its ctx.
func (sub *HaveSubscription) Err() error {
	select {
	case <-sub.done:
		return sub.err
	default:
		return nil
	}
}

// Close ends the subscription and waits for its goroutine to end.
func (sub *HaveSubscription) Close() error {
	sub.once.Do(func() {
		close(sub.closing)
		sub.stop()
		// Closing, not resetting, lets the peer see a clean end.
		_ = sub.s.Close()
	})
	<-sub.done
	return nil
}

// EncodeHaveRequest returns the have request for manifestID.
func EncodeHaveRequest(manifestID cid.Cid) ([]byte, error) {
	if err := manifest.CheckManifestID(manifestID); err != nil {
		return nil, fmt.Errorf("have request: %w", err)
	}
	return appendCID(nil, manifestID), nil
}

// DecodeHaveRequest returns the manifest CID of a have request.
func DecodeHaveRequest(p []byte) (cid.Cid, error) {
	id, n, err := decodeCID(p)
	if err != nil {
		return cid.Undef, fmt.Errorf("have request: %w", err)
	}
	if n != len(p) {
		return cid.Undef, fmt.Errorf("have request: %d bytes after the CID: %w", len(p)-n, ErrMalformed)
	}
	if err := manifest.CheckManifestID(id); err != nil {
		return cid.Undef, fmt.Errorf("have request: %v: %w", err, ErrMalformed)
	}
	return id, nil
}

// EncodeHaveResponse returns the have response of status st, carrying the
// bitmap have of n chunks if st is StatusOK.
func EncodeHaveResponse(st Status, have Bitmap, n int) []byte {
	if st != StatusOK {
		return []byte{byte(st)}
	}
	dst := make([]byte, 0, 1+binary.MaxVarintLen32+len(have))
	dst = append(dst, byte(st))
	dst = binary.AppendUvarint(dst, uint64(n))
	return append(dst, have...)
}

// DecodeHaveResponse returns the status of a have response and, for
// StatusOK, the release's chunk count n and its bitmap, which aliases p, is
// ceil(n/8) bytes long and has its spare bits clear.
func DecodeHaveResponse(p []byte) (Status, int, Bitmap, error) {
	st, err := decodeStatus(p)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("have response: %w", err)
	}
	rest := p[1:]
	if st != StatusOK {
		if len(rest) != 0 {
			return 0, 0, nil, fmt.Errorf("have response: %d bytes after status %v: %w", len(rest), st, ErrMalformed)
		}
		return st, 0, nil, nil
	}
	n, k, err := uvarint(rest)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("have response chunk count: %w", err)
	}
	if n > MaxReleaseChunks {
		return 0, 0, nil, fmt.Errorf("have response for %d chunks, at most %d: %w", n, MaxReleaseChunks, ErrMalformed)
	}
	have := Bitmap(rest[k:])
	if len(have) != bitmapLen(int(n)) {
		return 0, 0, nil, fmt.Errorf("have bitmap of %d bytes for %d chunks: %w", len(have), n, ErrMalformed)
	}
	if err := checkSpareBits(have, int(n)); err != nil {
		return 0, 0, nil, fmt.Errorf("have response: %w", err)
	}
	return st, int(n), have, nil
}

// checkSpareBits refuses a bitmap for n chunks that sets a bit past n.
func checkSpareBits(b Bitmap, n int) error {
	if n%8 != 0 && len(b) > 0 && b[len(b)-1]&(0xff>>(n%8)) != 0 {
		return fmt.Errorf("bitmap sets bits past chunk %d: %w", n, ErrMalformed)
	}
	return nil
}

// AppendHaveUpdate appends the have update listing idx to dst. idx must
// hold 1 to MaxHaveUpdate indexes.
func AppendHaveUpdate(dst []byte, idx []int) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(idx)))
	for _, i := range idx {
		dst = binary.AppendUvarint(dst, uint64(i))
	}
	return dst
}

// DecodeHaveUpdate returns the chunk indexes of a have update for a release
// of n chunks: 1 to MaxHaveUpdate of them, each below n.
func DecodeHaveUpdate(p []byte, n int) ([]int, error) {
	k, m, err := uvarint(p)
	if err != nil {
		return nil, fmt.Errorf("have update count: %w", err)
	}
	if k == 0 || k > MaxHaveUpdate {
		return nil, fmt.Errorf("have update of %d indexes, want 1 to %d: %w", k, MaxHaveUpdate, ErrMalformed)
	}
	p = p[m:]
	// Each index takes at least a byte: check before allocating.
	if uint64(len(p)) < k {
		return nil, fmt.Errorf("have update of %d indexes in %d bytes: %w", k, len(p), ErrMalformed)
	}
	idx := make([]int, 0, k)
	for range k {
		i, m, err := uvarint(p)
		if err != nil {
			return nil, fmt.Errorf("have update index: %w", err)
		}
		if i >= uint64(max(n, 0)) {
			return nil, fmt.Errorf("have update index %d of a release of %d chunks: %w", i, n, ErrMalformed)
		}
		idx = append(idx, int(i))
		p = p[m:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("have update: %d bytes after the indexes: %w", len(p), ErrMalformed)
	}
	return idx, nil
}
