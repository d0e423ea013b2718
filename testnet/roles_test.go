package testnet

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// eventually waits until cond holds, failing the test after timeout with
// what describe says of the last state.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pinned reports whether s's proxy keeps the release called name pinned.
func pinned(t *testing.T, s *Site, name string) bool {
	t.Helper()
	pins, err := s.Proxy.Agent.Peer().Store.Pins(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, ok := pins[name]
	return ok
}

func siteView(t *testing.T, m *Member, release, site string) adminapi.SiteCounts {
	t.Helper()
	st, err := m.Agent.API().(adminapi.Fleet).FleetStatus(t.Context(), release)
	if err != nil || len(st.Releases) != 1 {
		return adminapi.SiteCounts{}
	}
	for _, c := range st.Releases[0].Sites {
		if c.Site == site {
			return c
		}
	}
	return adminapi.SiteCounts{}
}

func TestAProxyUnpinsWhatEveryTargetedOnlineNodeIsDoneWith(t *testing.T) {
	n := startNetwork(t, Config{Sites: 1, NodesPerSite: 3})
	s := n.Sites[0]
	one := s.Nodes[0]

	// A hotfix for one node of three: the two it does not target never
	// install it, and must not keep it pinned.
	hf := publish(t, n, "SP-S041000005", 31, 1<<20)
	ix := n.NewIndex(1, hf)
	ix.Deployments = []manifest.Deployment{{Release: hf.Name, Selector: "node=" + one.ID().String(), Mode: manifest.ModeAssigned}}
	if err := n.SetIndex(ix); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the targeted node installs", func() (bool, string) {
		st := stateOf(one, hf.Name)
		return st.State == lifecycle.Installed, st.State
	})
	eventually(t, 30*time.Second, "the proxy unpins the release its one targeted node installed", func() (bool, string) {
		return !pinned(t, s, hf.Name), "pinned"
	})

	// A node goes offline before the next pack: once silent for a few
	// polls it is shown offline and keeps nothing pinned.
	gone := s.Nodes[2]
	if err := n.Stop(gone); err != nil {
		t.Fatal(err)
	}
	sp := publish(t, n, "SP-S041000006", 32, 1<<20)
	ix = n.NewIndex(2, hf, sp)
	ix.Deployments = append(ix.Deployments, manifest.Deployment{Release: sp.Name, Mode: manifest.ModeAssigned})
	if err := n.SetIndex(ix); err != nil {
		t.Fatal(err)
	}
	online := &Site{Name: s.Name, Proxy: s.Proxy, Nodes: s.Nodes[:2]}
	waitInstalled(t, n, sp, time.Minute, online)
	eventually(t, 30*time.Second, "the proxy shows the silent node offline and unpins the pack", func() (bool, string) {
		c := siteView(t, s.Proxy, sp.Name, s.Name)
		off := len(c.Offline) == 1 && c.Offline[0].Node == gone.ID().String() && !c.Offline[0].LastSeen.IsZero()
		return off && !pinned(t, s, sp.Name), ""
	})
	// Back online, it installs through the cache.
	if err := n.Start(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, sp, time.Minute, s)
	eventually(t, 30*time.Second, "the returning node is online again", func() (bool, string) {
		c := siteView(t, s.Proxy, sp.Name, s.Name)
		return len(c.Offline) == 0, "offline"
	})
}

func TestAProxyFetchesOverTheWANOnlyWhatIsDeployedToItsSite(t *testing.T) {
	n := startNetwork(t, Config{Sites: 2, NodesPerSite: 1})
	mine, other := n.Sites[0], n.Sites[1]
	r := publish(t, n, "SP-S041000005", 33, 1<<20)
	ix := n.NewIndex(1, r)
	ix.Deployments = []manifest.Deployment{{Release: r.Name, Selector: "site=" + mine.Name, Mode: manifest.ModeAssigned}}
	if err := n.SetIndex(ix); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, mine)

	// An admitted peer of the other site asks its proxy for the chunks of
	// a release deployed elsewhere: the proxy must not fetch them upstream.
	asker := other.Nodes[0].Agent.Peer().Host
	ids := r.Manifest.ChunkIDs()[:4]
	before := other.WANDown.Bytes()
	got := 0
	err := p2p.GetChunks(t.Context(), asker, other.Proxy.ID(), ids, func(_ cid.Cid, frame []byte) error {
		if frame != nil {
			got++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != 0 {
		t.Errorf("the other site's proxy served %d of %d chunks of a release not deployed to it", got, len(ids))
	}
	for _, id := range ids {
		if ok, _ := other.Proxy.Agent.Peer().Store.Has(t.Context(), id); ok {
			t.Errorf("the other site's proxy fetched chunk %s over its WAN", id)
		}
	}
	if in := other.WANDown.Bytes() - before; in > 64<<10 {
		t.Errorf("%d bytes came into the other site over its WAN", in)
	}
}

func TestNoPeerCanReportTheStatusOfASiteItIsNotEnrolledFor(t *testing.T) {
	n := startNetwork(t, Config{Sites: 2, NodesPerSite: 1})
	r := publish(t, n, "SP-S041000005", 34, 256<<10)
	if err := n.Announce(1, r); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, n, r, time.Minute, n.Sites...)
	victim := n.Sites[0]
	eventually(t, 30*time.Second, "the origin sees the victim site installed", func() (bool, string) {
		c := siteView(t, n.Origin, r.Name, victim.Name)
		return c.Installed == 1, ""
	})

	// A node of the other site, admitted to the swarm, poses as the
	// victim site's proxy and as that of a site that does not exist.
	rogue := n.Sites[1].Nodes[0]
	fake := fleet.SiteStatus{Site: victim.Name, Proxy: rogue.ID().String(), Reported: time.Now(), Nodes: []fleet.NodeStatus{{
		ID: victim.Nodes[0].ID().String(), Target: "server", Seen: time.Now(),
		Deployments: []fleet.DeploymentStatus{{Release: r.Name, State: lifecycle.Failed, Reason: "forged"}},
	}}}
	made := fleet.SiteStatus{Site: "made-up", Proxy: rogue.ID().String(), Reported: time.Now(), Nodes: fake.Nodes}
	client := fleet.NewClient(&p2p.Client{Host: rogue.Agent.Peer().Host})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := client.ReportStatus(ctx, n.Origin.ID(), &fleet.StatusReport{Sites: []fleet.SiteStatus{fake, made}}); err != nil {
		t.Fatal(err)
	}
	st, err := n.Origin.Agent.API().(adminapi.Fleet).FleetStatus(t.Context(), r.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Releases[0].Sites {
		switch c.Site {
		case victim.Name:
			if c.Installed != 1 || len(c.Failed) != 0 {
				t.Errorf("the victim site reads %+v after the forged report", c)
			}
		case "made-up":
			t.Errorf("the origin keeps a site no proxy is enrolled for: %+v", c)
		}
	}
	i := slices.IndexFunc(st.Unenrolled, func(u adminapi.Unenrolled) bool { return u.Peer == rogue.ID().String() })
	if i < 0 || !slices.Equal(st.Unenrolled[i].Sites, []string{victim.Name, "made-up"}) {
		t.Errorf("unenrolled reporters %+v, want the rogue with both sites it claimed", st.Unenrolled)
	}
}
