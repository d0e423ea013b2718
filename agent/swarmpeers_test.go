package agent

import (
	"fmt"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestSwarmPeersAreStableSymmetricAndBounded(t *testing.T) {
	var site []peer.ID
	for i := range 25 {
		site = append(site, peer.ID(fmt.Sprintf("node-%02d", i)))
	}
	others := func(self peer.ID) []peer.ID {
		return slices.DeleteFunc(slices.Clone(site), func(p peer.ID) bool { return p == self })
	}
	for _, self := range site {
		first := swarmPeers(self, others(self), maxSwarmPeers)
		if len(first) != maxSwarmPeers {
			t.Fatalf("%s got %d peers, want %d", self, len(first), maxSwarmPeers)
		}
		// Asked again with the candidates in another order: the same peers.
		shuffled := others(self)
		slices.Reverse(shuffled)
		if again := swarmPeers(self, shuffled, maxSwarmPeers); !slices.Equal(first, again) {
			t.Fatalf("%s got %v, then %v", self, first, again)
		}
		if slices.Contains(first, self) {
			t.Fatalf("%s was named to itself", self)
		}
	}
	// A pair scores the same from either end, so most nodes are chosen
	// back by their first choice (about 3 in 24 would be, by chance).
	mutual := 0
	for _, a := range site {
		b := swarmPeers(a, others(a), 1)[0]
		if slices.Contains(swarmPeers(b, others(b), maxSwarmPeers), a) {
			mutual++
		}
	}
	if mutual < len(site)/2 {
		t.Errorf("only %d of %d nodes were chosen back by their first choice", mutual, len(site))
	}
	// Fewer candidates than the bound: all of them.
	if got := swarmPeers(site[0], site[1:3], maxSwarmPeers); len(got) != 2 {
		t.Errorf("2 candidates gave %d peers", len(got))
	}
}
