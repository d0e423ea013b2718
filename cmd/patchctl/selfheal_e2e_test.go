package main

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
)

// A chunk that rots on the disk of a running agent is found by fsck,
// quarantined, and fetched back from the agent's peers: at the origin from
// the proxy that fetched it, at a node from its proxy or site peers. The
// fleet goes on, and a second fsck finds the store whole.
func TestAChunkThatRotsOnAnAgentsDiskIsFetchedBackFromItsPeers(t *testing.T) {
	e := newEnv(t)
	// The node keeps the chunks of what it installed: they are what rots.
	node := &agentProc{e: e, name: "n1", dir: filepath.Join(e.dir, "n1"), args: []string{"--keep-chunks"}}
	origin := smallFleet(t, e, node)
	waitFor(t, "n1 installs the service pack", func() (bool, string) {
		st, reason := nodeState(node)
		return st == "installed", st + " " + reason
	})

	for _, victim := range []*agentProc{origin, node} {
		t.Run(victim.name, func(t *testing.T) {
			chunks := storedChunksIn(t, victim.dir)
			ids := slices.SortedFunc(maps.Keys(chunks), func(a, b cid.Cid) int { return strings.Compare(a.KeyString(), b.KeyString()) })
			if len(ids) == 0 {
				t.Fatalf("%s holds no chunks", victim.name)
			}
			bad := ids[len(ids)/2]
			flipByte(t, chunks[bad].Pack, chunks[bad].Offset+chunks[bad].Size/2)

			r := e.fails(1, "corrupt or missing", "--data-dir", victim.dir, "fsck")
			if !strings.Contains(r.stdout, "corrupt "+bad.String()) || !strings.Contains(r.stdout, "fetching 1 chunks again") {
				t.Errorf("fsck on %s printed:\n%s", victim.name, r.stdout)
			}
			waitFor(t, victim.name+" fetches the chunk back", func() (bool, string) {
				r := e.patchctl("--data-dir", victim.dir, "fsck")
				return r.code == 0, fmt.Sprintf("exit %d: %s", r.code, r.stdout)
			})
			if loc, ok := storedChunksIn(t, victim.dir)[bad]; !ok || loc == chunks[bad] {
				t.Errorf("%s holds the chunk at %+v, want a new copy beside the rotten %+v", victim.name, loc, chunks[bad])
			}
		})
	}
	if st, _ := nodeState(node); st != "installed" {
		t.Errorf("n1 is %s after the mending, want installed", st)
	}
}
