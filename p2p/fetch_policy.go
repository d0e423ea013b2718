package p2p

import (
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// This file is the fetch's choosing policy: which chunks to ask of which
// peer, and how many at once. It is plain functions over plain state, with no
// goroutine, network or clock, so that every rule can be tested on its own.

// chunk states
const (
	missing = iota
	requested
	stored
)

// chunkTable is the per-chunk state the policy reads, every slice indexed by
// chunk. The fetch's goroutine keeps it.
type chunkTable struct {
	state      []uint8 // missing, requested or stored
	copies     []uint8 // requests in flight per chunk
	avail      []int   // how many usable peers have each chunk
	cheapAvail []int   // how many of those are not Costly
	rank       []int   // tie-break order among equally rare chunks
	pending    []int   // missing chunks not in flight, in random order
	pendingPos []int   // position of each chunk in pending, or -1
	remaining  int     // chunks not stored
	batchSize  int     // chunks one request asks for at most
	hasCostly  bool    // a peer is Costly
	share      shareParts
}

// shareParts is how a Share splits the chunks between its peers.
type shareParts struct {
	owner []int  // the position in Share of the peer whose part each chunk is in; nil without a share
	me    int    // this host's position in Share
	gone  []bool // by position: the peer is gone, or was never one of the fetch's
	open  bool   // the sharing peers have announced nothing new for ShareWait
}

// take removes a chunk from pending and marks it requested.
func (t *chunkTable) take(i int) {
	pos := t.pendingPos[i]
	last := t.pending[len(t.pending)-1]
	t.pending[pos] = last
	t.pendingPos[last] = pos
	t.pending = t.pending[:len(t.pending)-1]
	t.pendingPos[i] = -1
	t.state[i] = requested
}

// unrequest puts a chunk whose request failed back among the pending ones,
// unless another request for it is still in flight.
func (t *chunkTable) unrequest(i int) {
	if t.copies[i] > 0 {
		t.copies[i]--
	}
	if t.state[i] == requested && t.copies[i] == 0 {
		t.state[i] = missing
		t.pendingPos[i] = len(t.pending)
		t.pending = append(t.pending, i)
	}
}

// tail reports whether a fetch with Costly peers is at its last batch: then
// cheap peers get one chunk at a time and Costly peers any chunk, so that the
// last chunks do not wait in a queue at a sibling's WAN uplink, shared with
// every other proxy finishing too, while the upstream is idle
// (docs/decisions/0028).
func (t *chunkTable) tail() bool {
	return t.hasCostly && t.remaining <= t.batchSize
}

// endgame reports whether chunks in flight may be asked again of another
// peer: nothing is pending and at most a batch is missing. Begun any sooner,
// with deep windows, fetchers received far more duplicates
// (docs/decisions/0026).
func (t *chunkTable) endgame() bool {
	return len(t.pending) == 0 && t.remaining <= t.batchSize
}

// costlyMay reports whether a Costly peer may be asked for chunk i: no cheap
// peer has it, and it is this host's part of a share, or its owner is gone,
// or the share is open. In the last batch it may be asked for anything.
func (t *chunkTable) costlyMay(i int) bool {
	tail := t.tail()
	if t.cheapAvail[i] > 0 && !tail {
		return false
	}
	if tail || t.share.open || t.share.owner == nil {
		return true
	}
	o := t.share.owner[i]
	return o == t.share.me || t.share.gone[o]
}

// room returns how many chunks to ask now of a peer with window chunks
// allowed and inflight in flight, or 0 to wait. A batch goes out once a
// whole batch fits, or, for a window smaller than two batches, once half the
// window is free: one half travels while the other is asked for, so a small
// window on a long link is not stop-and-wait (docs/decisions/0023). In the
// last batch a cheap peer gets one chunk at a time.
func (t *chunkTable) room(window, inflight int, costly bool) int {
	if t.tail() && !costly {
		window = 1
	}
	if window-inflight < min(t.batchSize, t.remaining, max(1, window/2)) {
		return 0
	}
	return min(t.batchSize, window-inflight)
}

// rarer reports whether chunk a goes before chunk b: fewer usable peers have
// it, or as few and it ranks first.
func (t *chunkTable) rarer(a, b int) bool {
	if t.avail[a] != t.avail[b] {
		return t.avail[a] < t.avail[b]
	}
	return t.rank[a] < t.rank[b]
}

// pickRarest returns up to n pending chunks that have holds, the rarest
// first, in picks' storage. For a costly peer it picks only what costlyMay
// allows. It does not take them.
func (t *chunkTable) pickRarest(picks []int, n int, have Bitmap, costly bool) []int {
	best := picks[:0]
	if n <= 0 {
		return best
	}
	for _, i := range t.pending {
		if !have.Has(i) || (costly && !t.costlyMay(i)) {
			continue
		}
		if len(best) == n && !t.rarer(i, best[n-1]) {
			continue
		}
		// Insert in order into the short list.
		pos := sort.Search(len(best), func(j int) bool { return t.rarer(i, best[j]) })
		if len(best) < n {
			best = append(best, 0)
		}
		copy(best[pos+1:], best[pos:])
		best[pos] = i
	}
	return best
}

// pickEndgame returns up to n chunks in flight to one peer only that have
// holds and that were not asked of this peer (asked), in picks' storage, so
// that the slowest peers do not decide when the fetch ends.
func (t *chunkTable) pickEndgame(picks []int, n int, have Bitmap, asked map[int]bool) []int {
	picks = picks[:0]
	for i, st := range t.state {
		if len(picks) == n {
			break
		}
		if st == requested && t.copies[i] < 2 && !asked[i] && have.Has(i) {
			picks = append(picks, i)
		}
	}
	return picks
}

// chunkRanks orders the chunks for breaking ties in rarity. By default the
// order is random, which spreads fetchers that start together over different
// chunks, so they have something to trade from the start. With a share (more
// than one peer, self among them), the order is the chunks sorted by CID,
// rotated to start at self's part, and owner gives for each chunk the
// position in share of the peer whose part it is in.
func chunkRanks(ids []cid.Cid, self peer.ID, share []peer.ID, rng *rand.Rand) (rank, owner []int) {
	n := len(ids)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	me := slices.Index(share, self)
	if len(share) > 1 && me >= 0 {
		sort.Slice(order, func(a, b int) bool { return ids[order[a]].KeyString() < ids[order[b]].KeyString() })
		owner = make([]int, n)
		for pos, i := range order {
			owner[i] = pos * len(share) / n
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
	return rank, owner
}

// minWindow is the fewest chunks a peer's window allows in flight while
// they arrive well within the stall timeout: enough to keep the peer busy
// across the round trips between batches.
const minWindow = 4

// floorWindow is the fewest chunks the window of a peer delivering rate
// bytes per second allows in flight, of frame bytes each: minWindow, or
// fewer, down to one, for a peer so slow that minWindow chunks would take
// more than a quarter of the stall timeout to arrive. A peer's streams share
// its connection, where one stream's chunks queue behind another's, so a
// deeper window only makes the chunks behind look stalled
// (docs/decisions/0022).
func floorWindow(rate float64, stall time.Duration, frame float64) int {
	return min(minWindow, max(1, int(rate*stall.Seconds()/4/frame)))
}

// rateWindow is the window a peer's rate allows: queue's worth of its rate
// in frames of frame bytes, at least floor and at most maxWindow.
func rateWindow(rate float64, queue time.Duration, frame float64, floor, maxWindow int) int {
	return min(maxWindow, max(floor, int(rate*queue.Seconds()/frame)))
}
