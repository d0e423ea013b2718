package p2p

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// fetchEvent is anything that changes a fetch's state. Goroutines that
// block (subscriptions, request streams, store writers) send events; the
// fetch's own goroutine applies them one at a time, so the state needs no
// lock. The events sent for every chunk or update are a pointer or a struct
// of one pointer, so that sending one through the channel allocates nothing.
type fetchEvent interface {
	// apply changes f's state. An error ends the fetch; ctx is the
	// fetch's, ended once the fetch is ending.
	apply(ctx context.Context, f *fetch) error
}

// haveOpened: a have subscription opened with the peer's bitmap.
type haveOpened struct{ sub *HaveSubscription }

func (e haveOpened) apply(_ context.Context, f *fetch) error {
	p := f.peers[e.sub.Peer]
	if p.gone {
		e.sub.Close()
		return nil
	}
	p.sub, p.have = e.sub, e.sub.Have
	fresh := 0
	for i := range f.ids {
		if p.have.Has(i) {
			f.counted(p, i, 1)
			fresh++
		}
	}
	f.news(p, fresh)
	sub := e.sub
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for idx := range sub.Updates {
			u := haveUpdates.Get().(*haveUpdate)
			u.peer, u.indexes = sub.Peer, idx
			f.events <- u
		}
		f.events <- haveEnded{}
	}()
	return nil
}

// haveFailed: a have subscription did not open.
type haveFailed struct {
	peer peer.ID
	err  error
}

func (e haveFailed) apply(ctx context.Context, f *fetch) error {
	p := f.peers[e.peer]
	f.drop(p, fmt.Sprintf("have: %v", e.err))
	// Under load a dial's handshake can time out although the peer is
	// well: such a peer is tried again after a backoff
	// (docs/decisions/0025).
	if p.haveFailures++; p.haveFailures <= haveRetries && ctx.Err() == nil {
		p.retryAt = f.clock.Now().Add(haveRetryDelay << (p.haveFailures - 1))
	}
	return nil
}

// haveUpdate: a peer announced chunks it stored. Updates come for every
// chunk any peer stores, so they are pooled.
type haveUpdate struct {
	peer    peer.ID
	indexes []int
}

var haveUpdates = sync.Pool{New: func() any { return new(haveUpdate) }}

func (e *haveUpdate) apply(_ context.Context, f *fetch) error {
	if p := f.peers[e.peer]; !p.gone {
		fresh := 0
		for _, i := range e.indexes {
			if !p.have.Has(i) {
				p.have.Set(i)
				f.counted(p, i, 1)
				fresh++
			}
		}
		f.news(p, fresh)
	}
	*e = haveUpdate{}
	haveUpdates.Put(e)
	return nil
}

// haveEnded: a have subscription ended. The peer stays usable for what it
// announced; it just tells us nothing new.
type haveEnded struct{}

func (haveEnded) apply(context.Context, *fetch) error { return nil }

// chunkStored: a chunk was received, verified and stored.
type chunkStored struct{ *chunkResult }

func (e chunkStored) apply(_ context.Context, f *fetch) error {
	p, i := f.peers[e.b.peer], e.i
	delete(p.asked, i)
	p.inflight--
	p.failures = 0
	f.countWire(p, e.wire)
	if f.copies[i] > 0 {
		f.copies[i]--
	}
	if f.state[i] == stored {
		f.res.Duplicates++
		return nil
	}
	f.state[i] = stored
	f.remaining--
	f.res.ChunksFetched++
	f.bytesDone += f.sizes[i]
	p.stats.Chunks++
	if f.cfg.Progress != nil {
		f.cfg.Progress(FetchProgress{
			ChunksTotal: len(f.ids), ChunksDone: len(f.ids) - f.remaining,
			BytesTotal: f.bytesTotal, BytesDone: f.bytesDone, WireBytes: f.res.BytesFetched,
			Peer: p.id, PeerWireBytes: p.stats.WireBytes,
		})
	}
	return nil
}

// chunkRejected: a chunk failed verification.
type chunkRejected struct{ *chunkResult }

func (e chunkRejected) apply(_ context.Context, f *fetch) error {
	p := f.peers[e.b.peer]
	f.countWire(p, e.wire)
	if !p.stats.Banned {
		p.stats.Banned = true
		f.drop(p, fmt.Sprintf("banned: %v", e.err))
		// A peer that lies about content is cut off, not only ignored:
		// its other streams would be wasted reads.
		_ = f.h.Network().ClosePeer(p.id)
	}
	return nil
}

// chunkAbsent: a peer announced a chunk and then did not have it. It is
// asked of others, and not of that peer again.
type chunkAbsent struct{ *chunkResult }

func (e chunkAbsent) apply(_ context.Context, f *fetch) error {
	p, i := f.peers[e.b.peer], e.i
	delete(p.asked, i)
	p.inflight--
	f.unrequest(i)
	if p.have.Has(i) {
		p.have[i/8] &^= 0x80 >> (i % 8)
		f.counted(p, i, -1)
	}
	return nil
}

// chunkUnstored: a chunk was received but not stored because its peer was
// dropped or the fetch is ending. It stays in the peer's asked set, and
// batchDone returns it to pending.
type chunkUnstored struct{ *chunkResult }

func (chunkUnstored) apply(context.Context, *fetch) error { return nil }

// storeFailed: the store itself failed (a full disk, say), which no peer can
// help with: the fetch ends.
type storeFailed struct{ *chunkResult }

func (e storeFailed) apply(context.Context, *fetch) error { return e.err }

// batchDone: a request stream ended, after every chunk it received was
// stored or not. Chunks it did not deliver return to pending.
type batchDone struct{ *batch }

func (e batchDone) apply(ctx context.Context, f *fetch) error {
	p := f.peers[e.peer]
	p.streams--
	for _, i := range e.indexes {
		if p.asked[i] {
			delete(p.asked, i)
			p.inflight--
			f.unrequest(i)
		}
	}
	// A stream the fetch cut was counted, if at all, when it was cut.
	if e.err != nil && !e.cancelled && !p.gone && ctx.Err() == nil {
		floor := f.floorWindow(p)
		if refusedBusy(e.err) && p.window > floor {
			// The peer is at its limits, not failing: ask less of
			// it at once, and count it a failure only at the floor.
			p.window = max(floor, p.window/2)
			return nil
		}
		p.failures++
		p.window = max(floor, p.window/2)
		if p.failures >= f.cfg.MaxFailures {
			f.drop(p, e.err.Error())
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
	}
}

// news notes that p said something, announcing fresh chunks new to the
// fetch's count: it keeps the fetch from going idle, and fresh chunks from a
// cheap peer keep a share closed to the Costly peers.
func (f *fetch) news(p *fetchPeer, fresh int) {
	f.lastNews = f.clock.Now()
	if fresh > 0 && !p.costly {
		f.cheapNews = f.lastNews
	}
}

// drop stops using p: its streams end, its subscription closes and what it
// had stops counting towards availability. Its batches report batchDone as
// they end; their chunks return to pending then.
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
}

// refusedBusy reports whether err is a peer resetting a request stream
// because its resource limits (or rate limits) are reached: libp2p's
// resource manager refuses streams beyond them with these codes.
func refusedBusy(err error) bool {
	var se *network.StreamError
	return errors.As(err, &se) && se.Remote &&
		(se.ErrorCode == network.StreamResourceLimitExceeded || se.ErrorCode == network.StreamRateLimited)
}
