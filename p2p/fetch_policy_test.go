package p2p

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// pendingTable returns a table of len(avail) chunks, all pending, with the
// given availability, cheap availability and ranks (nil ranks: in index
// order), in batches of 16.
func pendingTable(avail, cheap, rank []int) *chunkTable {
	n := len(avail)
	t := &chunkTable{
		state:      make([]uint8, n),
		copies:     make([]uint8, n),
		avail:      avail,
		cheapAvail: cheap,
		rank:       rank,
		pendingPos: make([]int, n),
		remaining:  n,
		batchSize:  16,
	}
	if t.cheapAvail == nil {
		t.cheapAvail = avail
	}
	if t.rank == nil {
		t.rank = make([]int, n)
		for i := range t.rank {
			t.rank[i] = i
		}
	}
	for i := range n {
		t.pendingPos[i] = len(t.pending)
		t.pending = append(t.pending, i)
	}
	return t
}

// bitmapOf returns a bitmap of n chunks with set set; nil set means all.
func bitmapOf(n int, set []int) Bitmap {
	b := NewBitmap(n)
	if set == nil {
		for i := range n {
			b.Set(i)
		}
	}
	for _, i := range set {
		b.Set(i)
	}
	return b
}

func TestPickRarest(t *testing.T) {
	tests := []struct {
		name        string
		avail       []int
		cheap       []int // nil: as avail
		rank        []int // nil: index order
		have        []int // nil: every chunk
		requested   []int // not pending
		n           int
		costly      bool
		remaining   int // 0: far more than a batch
		share       shareParts
		costlyPeers bool
		want        []int
	}{
		{name: "rarest first", avail: []int{3, 1, 2, 1}, n: 4, want: []int{1, 3, 2, 0}},
		{name: "ties by rank", avail: []int{1, 1, 1, 1}, rank: []int{2, 0, 3, 1}, n: 4, want: []int{1, 3, 0, 2}},
		{name: "the n rarest", avail: []int{3, 1, 2, 1, 5, 1}, n: 2, want: []int{1, 3}},
		{name: "only what the peer has", avail: []int{3, 1, 2, 1}, have: []int{0, 2}, n: 4, want: []int{2, 0}},
		{name: "only pending chunks", avail: []int{3, 1, 2, 1}, requested: []int{1}, n: 4, want: []int{3, 2, 0}},
		{name: "nothing the peer has", avail: []int{1, 1}, have: []int{}, n: 4, want: []int{}},
		{
			name:  "costly peer only for chunks no cheap peer has",
			avail: []int{1, 2, 1, 2}, cheap: []int{0, 1, 1, 0}, costly: true, costlyPeers: true, n: 4,
			want: []int{0, 3},
		},
		{
			name:  "cheap peer for any chunk beside a costly one",
			avail: []int{1, 2, 1, 2}, cheap: []int{0, 1, 1, 0}, costlyPeers: true, n: 4,
			want: []int{0, 2, 1, 3},
		},
		{
			name:  "costly peer for its own share part",
			avail: []int{1, 1, 1, 1}, cheap: []int{0, 0, 0, 0}, costly: true, costlyPeers: true, n: 4,
			share: shareParts{owner: []int{0, 1, 0, 1}, me: 0, gone: []bool{true, false}},
			want:  []int{0, 2},
		},
		{
			name:  "costly peer for a gone owner's part",
			avail: []int{1, 1, 1, 1}, cheap: []int{0, 0, 0, 0}, costly: true, costlyPeers: true, n: 4,
			share: shareParts{owner: []int{0, 1, 2, 2}, me: 0, gone: []bool{true, true, false}},
			want:  []int{0, 1},
		},
		{
			name:  "costly peer for every part once the share is open",
			avail: []int{1, 1, 1, 1}, cheap: []int{0, 0, 1, 0}, costly: true, costlyPeers: true, n: 4,
			share: shareParts{owner: []int{0, 1, 1, 1}, me: 0, gone: []bool{true, false}, open: true},
			want:  []int{0, 1, 3},
		},
		{
			name:  "cheap peer for every part",
			avail: []int{1, 1, 1, 1}, costlyPeers: true, n: 4,
			share: shareParts{owner: []int{0, 1, 1, 1}, me: 0, gone: []bool{true, false}},
			want:  []int{0, 1, 2, 3},
		},
		{
			name:  "last batch: costly peer for any chunk",
			avail: []int{2, 2, 1, 1}, cheap: []int{1, 1, 0, 0}, costly: true, costlyPeers: true, n: 4, remaining: 4,
			share: shareParts{owner: []int{1, 1, 1, 1}, me: 0, gone: []bool{true, false}},
			want:  []int{2, 3, 0, 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := pendingTable(tt.avail, tt.cheap, tt.rank)
			for _, i := range tt.requested {
				tab.take(i)
			}
			// Far from the last batch, unless the case says otherwise.
			tab.remaining = 100
			if tt.remaining > 0 {
				tab.remaining = tt.remaining
			}
			tab.hasCostly = tt.costlyPeers
			tab.share = tt.share
			got := tab.pickRarest(nil, tt.n, bitmapOf(len(tt.avail), tt.have), tt.costly)
			if !slices.Equal(got, tt.want) {
				t.Errorf("picked %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPickRarestReusesPicksStorage(t *testing.T) {
	tab := pendingTable([]int{2, 1, 3}, nil, nil)
	have := bitmapOf(3, nil)
	picks := make([]int, 5, 16)
	got := tab.pickRarest(picks, 2, have, false)
	if !slices.Equal(got, []int{1, 0}) || &got[0] != &picks[0] {
		t.Errorf("picked %v, want [1 0] in the storage given", got)
	}
	if n := testing.AllocsPerRun(100, func() { picks = tab.pickRarest(picks, 2, have, false) }); n != 0 {
		t.Errorf("%v allocations a pick, want none", n)
	}
}

func TestRoom(t *testing.T) {
	tests := []struct {
		name              string
		window, inflight  int
		remaining         int
		costly, hasCostly bool
		want              int
	}{
		{name: "a whole batch fits", window: 64, remaining: 100, want: 16},
		{name: "a big window waits for a whole batch", window: 64, inflight: 49, remaining: 100, want: 0},
		{name: "a big window with a batch free", window: 64, inflight: 48, remaining: 100, want: 16},
		{name: "a small window sends half at a time", window: 8, inflight: 4, remaining: 100, want: 4},
		{name: "a small window waits for half", window: 8, inflight: 5, remaining: 100, want: 0},
		{name: "a window of one", window: 1, remaining: 100, want: 1},
		{name: "a window of one busy", window: 1, inflight: 1, remaining: 100, want: 0},
		{name: "few chunks left need no whole batch", window: 64, inflight: 60, remaining: 3, want: 4},
		{name: "last batch: a cheap peer one chunk at a time", window: 64, remaining: 10, hasCostly: true, want: 1},
		{name: "last batch: a cheap peer with one in flight", window: 64, inflight: 1, remaining: 10, hasCostly: true, want: 0},
		{name: "last batch: a costly peer its window", window: 64, remaining: 10, costly: true, hasCostly: true, want: 16},
		{name: "no last-batch rule without costly peers", window: 64, remaining: 10, want: 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := &chunkTable{remaining: tt.remaining, batchSize: 16, hasCostly: tt.hasCostly}
			if got := tab.room(tt.window, tt.inflight, tt.costly); got != tt.want {
				t.Errorf("room(%d, %d, %v) = %d, want %d", tt.window, tt.inflight, tt.costly, got, tt.want)
			}
		})
	}
}

func TestPickEndgame(t *testing.T) {
	// Chunk 0 is stored; 1 is in flight once; 2 twice; 3 once, to this
	// peer; 4 once, and this peer lacks it; 5 pending; 6 and 7 once.
	tab := pendingTable(make([]int, 8), nil, nil)
	for i := range 8 {
		if i != 5 {
			tab.take(i)
		}
	}
	tab.state[0] = stored
	tab.copies = []uint8{0, 1, 2, 1, 1, 0, 1, 1}
	have := bitmapOf(8, []int{0, 1, 2, 3, 5, 6, 7})
	asked := map[int]bool{3: true}
	tests := []struct {
		n    int
		want []int
	}{
		{n: 16, want: []int{1, 6, 7}},
		{n: 2, want: []int{1, 6}},
	}
	for _, tt := range tests {
		if got := tab.pickEndgame(nil, tt.n, have, asked); !slices.Equal(got, tt.want) {
			t.Errorf("pickEndgame(n=%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

func TestEndgameBeginsWithNothingPendingAndABatchMissing(t *testing.T) {
	tests := []struct {
		name      string
		pending   int
		remaining int
		want      bool
	}{
		{name: "a batch in flight", remaining: 16, want: true},
		{name: "more than a batch in flight", remaining: 17},
		{name: "a chunk pending", pending: 1, remaining: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := &chunkTable{pending: make([]int, tt.pending), remaining: tt.remaining, batchSize: 16}
			if got := tab.endgame(); got != tt.want {
				t.Errorf("endgame() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestUnrequestReturnsAChunkOnceNoCopyIsInFlight(t *testing.T) {
	tab := pendingTable([]int{1, 1}, nil, nil)
	tab.take(0)
	tab.copies[0] = 2 // asked of two peers in the endgame
	tab.unrequest(0)
	if tab.state[0] != requested || slices.Contains(tab.pending, 0) {
		t.Fatalf("with a copy still in flight: state %d, pending %v", tab.state[0], tab.pending)
	}
	tab.unrequest(0)
	if tab.state[0] != missing || !slices.Contains(tab.pending, 0) || tab.pending[tab.pendingPos[0]] != 0 {
		t.Fatalf("with no copy in flight: state %d, pending %v", tab.state[0], tab.pending)
	}
}

func TestChunkRanks(t *testing.T) {
	_, ids := testChunks(9, 64, 1)
	sorted := slices.Clone(ids)
	slices.SortFunc(sorted, func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
	a, self, c := peer.ID("a"), peer.ID("self"), peer.ID("c")
	rng := rand.New(rand.NewPCG(1, 2))

	t.Run("share: parts by CID, ties from this host's part on", func(t *testing.T) {
		rank, owner := chunkRanks(ids, self, []peer.ID{a, self, c}, rng)
		pos := map[cid.Cid]int{}
		for p, id := range sorted {
			pos[id] = p
		}
		for i, id := range ids {
			p := pos[id]
			if want := p / 3; owner[i] != want {
				t.Errorf("chunk %d (position %d by CID) owned by %d, want %d", i, p, owner[i], want)
			}
			if want := (p + 6) % 9; rank[i] != want {
				t.Errorf("chunk %d (position %d by CID) ranks %d, want %d", i, p, rank[i], want)
			}
		}
	})
	for name, share := range map[string][]peer.ID{
		"no share":               nil,
		"a share of one":         {self},
		"a share without itself": {a, c},
	} {
		t.Run(name+": a random order", func(t *testing.T) {
			rank, owner := chunkRanks(ids, self, share, rng)
			if owner != nil {
				t.Errorf("owners %v, want none", owner)
			}
			if got := slices.Sorted(slices.Values(rank)); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8}) {
				t.Errorf("ranks %v, want a permutation", rank)
			}
		})
	}
}

func TestWindows(t *testing.T) {
	const frame = 64 << 10
	stall := 15 * time.Second
	floors := []struct {
		name string
		rate float64
		want int
	}{
		{name: "a fast peer keeps minWindow", rate: 10e6, want: minWindow},
		{name: "a slow peer keeps what arrives in a quarter of the stall timeout", rate: 40e3, want: 2},
		{name: "a very slow peer keeps one chunk", rate: 5e3, want: 1},
		{name: "an unmeasured peer keeps one chunk", rate: 0, want: 1},
	}
	for _, tt := range floors {
		t.Run(tt.name, func(t *testing.T) {
			if got := floorWindow(tt.rate, stall, frame); got != tt.want {
				t.Errorf("floorWindow(%v B/s) = %d, want %d", tt.rate, got, tt.want)
			}
		})
	}
	windows := []struct {
		name       string
		rate       float64
		floor, max int
		want       int
	}{
		{name: "queue time's worth of the rate", rate: 10 * frame, floor: 4, max: 1024, want: 5},
		{name: "at most the max", rate: 1e9, floor: 4, max: 1024, want: 1024},
		{name: "at least the floor", rate: 1e3, floor: 2, max: 1024, want: 2},
	}
	for _, tt := range windows {
		t.Run(tt.name, func(t *testing.T) {
			if got := rateWindow(tt.rate, 500*time.Millisecond, frame, tt.floor, tt.max); got != tt.want {
				t.Errorf("rateWindow(%v B/s) = %d, want %d", tt.rate, got, tt.want)
			}
		})
	}
}
