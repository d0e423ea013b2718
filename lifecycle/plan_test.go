package lifecycle

import (
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
)

func TestDeploymentsTargetNodesBySelectorModeAndWindow(t *testing.T) {
	e := manifest.IndexEntry{Name: "SP-S041000005"}
	ix := func(ds ...manifest.Deployment) *manifest.Index {
		for i := range ds {
			ds[i].Release = e.Name
		}
		return &manifest.Index{Releases: []manifest.IndexEntry{e}, Deployments: ds}
	}
	a1 := NodeFacts{Site: "a", Target: "server", Node: "n1", Labels: map[string]string{"ring": "canary"}}
	b1 := NodeFacts{Site: "b", Target: "client", Node: "n2"}
	night := manifest.Deployment{Selector: "site=a", Mode: manifest.ModeAssigned, Window: "22:00-04:00"}
	tests := []struct {
		name     string
		ix       *manifest.Index
		node     NodeFacts
		targeted bool
		assigned bool
		windows  int
	}{
		{"no deployment targets nobody", ix(), a1, false, false, 0},
		{"an empty selector is every node", ix(manifest.Deployment{Mode: manifest.ModeAssigned}), b1, true, true, 0},
		{"a site term", ix(manifest.Deployment{Selector: "site=a", Mode: manifest.ModeAssigned}), b1, false, false, 0},
		{"terms are and-ed", ix(manifest.Deployment{Selector: "ring=canary,site=a", Mode: manifest.ModeAssigned}), a1, true, true, 0},
		{"a label the node lacks", ix(manifest.Deployment{Selector: "ring=canary", Mode: manifest.ModeAssigned}), b1, false, false, 0},
		{"available is targeted, not assigned", ix(manifest.Deployment{Mode: manifest.ModeAvailable}), a1, true, false, 0},
		{"a window", ix(night), a1, true, true, 1},
		{"a deployment without a window wins over one with", ix(night, manifest.Deployment{Selector: "target=server", Mode: manifest.ModeAssigned}), a1, true, true, 0},
		{"a selector that does not parse matches nothing", ix(manifest.Deployment{Selector: "Site=a", Mode: manifest.ModeAssigned}), a1, false, false, 0},
		{"a window that does not parse matches nothing", ix(manifest.Deployment{Mode: manifest.ModeAssigned, Window: "25:00-26:00"}), a1, false, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := PlanFor(tt.ix, e, tt.node)
			if p.Targeted != tt.targeted || p.Assigned != tt.assigned || len(p.Windows) != tt.windows {
				t.Errorf("plan = %+v, want targeted %v, assigned %v, %d windows", p, tt.targeted, tt.assigned, tt.windows)
			}
		})
	}
	if DeployedToSite(ix(night), e, "b") || !DeployedToSite(ix(night), e, "a") {
		t.Error("a proxy replicates a release deployed to another site only, or not one deployed to its own")
	}
	if !DeployedToSite(ix(manifest.Deployment{Selector: "ring=canary", Mode: manifest.ModeAvailable}), e, "b") {
		t.Error("a deployment by label may match nodes of any site, so every proxy replicates it")
	}
}

func TestAnAssignedInstallWaitsForItsWindow(t *testing.T) {
	w, err := ParseWindow("22:00-04:00")
	if err != nil {
		t.Fatal(err)
	}
	p := Plan{Targeted: true, Assigned: true, Windows: []Window{w}}
	noon := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	if ok, next := p.Open(noon); ok || !next.Equal(time.Date(2026, 11, 22, 22, 0, 0, 0, time.UTC)) {
		t.Errorf("at noon: open %v, next %s; want closed until 22:00", ok, next)
	}
	if ok, _ := p.Open(noon.Add(13 * time.Hour)); !ok {
		t.Error("at 01:00 the window is closed")
	}
}
