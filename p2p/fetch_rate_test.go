package p2p

import (
	"testing"
	"time"

	"github.com/filecoin-project/go-clock"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestRateMeterIsAnEWMAOfSamplesAtLeast50msLong(t *testing.T) {
	var m rateMeter
	t0 := time.Unix(0, 0)
	steps := []struct {
		n       int64
		at      time.Duration
		updated bool
		rate    float64
	}{
		{n: 1000, at: 0},                     // the first bytes start a sample
		{n: 1000, at: 10 * time.Millisecond}, // too short a sample
		{n: 3000, at: 100 * time.Millisecond, updated: true, rate: 50e3}, // 5,000 bytes in 100 ms
		{n: 10000, at: 200 * time.Millisecond, updated: true, rate: 0.7*50e3 + 0.3*100e3},
	}
	for k, st := range steps {
		if got := m.add(st.n, t0.Add(st.at)); got != st.updated {
			t.Fatalf("step %d: updated %v, want %v", k, got, st.updated)
		}
		if st.updated && m.rate != st.rate {
			t.Fatalf("step %d: rate %v, want %v", k, m.rate, st.rate)
		}
	}
}

func TestHeardTakesTheClockAndAllocatesNothing(t *testing.T) {
	clk := clock.NewMock()
	p := &fetchPeer{id: "p"}
	f := &fetch{clock: clk, epoch: clk.Now(), peers: map[peer.ID]*fetchPeer{"p": p}}
	f.publishPeers()
	clk.Add(3 * time.Second)
	f.heard("p", 100)
	f.heard("unknown", 100)
	if got := time.Duration(p.heard.Load()); got != 3*time.Second {
		t.Errorf("heard at %s, want 3s", got)
	}
	if n := testing.AllocsPerRun(100, func() { f.heard("p", 100) }); n != 0 {
		t.Errorf("%v allocations a read, want none", n)
	}
}
