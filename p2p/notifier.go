package p2p

import (
	"sync"

	"github.com/ipfs/go-cid"
)

// HaveNotifier carries "chunk stored" events from whatever writes the store
// to the have streams that push them to peers. The writer calls Stored after
// every chunk it stores; Stored never blocks on a slow subscriber, because
// each subscription coalesces what it has not yet sent into a set bounded by
// its release's chunk count. The zero value is not usable; a nil
// *HaveNotifier ignores Stored. It is safe for concurrent use.
type HaveNotifier struct {
	mu   sync.RWMutex
	subs map[*haveSub]struct{}
}

// NewHaveNotifier returns a notifier without subscriptions.
func NewHaveNotifier() *HaveNotifier {
	return &HaveNotifier{subs: make(map[*haveSub]struct{})}
}

// Stored tells every subscription whose release holds id that id is now
// stored.
func (n *HaveNotifier) Stored(id cid.Cid) {
	if n == nil {
		return
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	for s := range n.subs {
		if i, ok := s.index[id]; ok {
			s.add(i)
		}
	}
}

// subscribe returns a subscription to the chunks of index, which maps each
// chunk of a release to its position among the release's n chunks. It must be
// ended with unsubscribe.
func (n *HaveNotifier) subscribe(index map[cid.Cid]int, nChunks int) *haveSub {
	s := &haveSub{
		index:  index,
		signal: make(chan struct{}, 1),
		queued: NewBitmap(nChunks),
	}
	n.mu.Lock()
	n.subs[s] = struct{}{}
	n.mu.Unlock()
	return s
}

func (n *HaveNotifier) unsubscribe(s *haveSub) {
	n.mu.Lock()
	delete(n.subs, s)
	n.mu.Unlock()
}

// Subscriptions returns the number of open subscriptions, for metrics and
// tests.
func (n *HaveNotifier) Subscriptions() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return len(n.subs)
}

// haveSub is one have stream's view of the notifier.
type haveSub struct {
	index  map[cid.Cid]int // read-only once subscribed
	signal chan struct{}   // holds a token while pending is not empty

	mu      sync.Mutex
	queued  Bitmap // every index ever added, so each is queued once
	pending []int
}

func (s *haveSub) add(i int) {
	s.mu.Lock()
	fresh := !s.queued.Has(i)
	if fresh {
		s.queued.Set(i)
		s.pending = append(s.pending, i)
	}
	s.mu.Unlock()
	if fresh {
		select {
		case s.signal <- struct{}{}:
		default: // a token is already waiting
		}
	}
}

// take appends the pending indexes to dst and empties the queue.
func (s *haveSub) take(dst []int) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = append(dst, s.pending...)
	s.pending = s.pending[:0]
	return dst
}
