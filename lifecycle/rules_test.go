package lifecycle

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/patchctl/patchctl/manifest"
)

func TestActionStringsNameTheRuleOutcomes(t *testing.T) {
	for a, want := range map[Action]string{
		ActionInstall:   "install",
		ActionInstalled: "installed",
		ActionBlocked:   "blocked",
		ActionRefused:   "refused",
		Action(9):       "Action(9)",
	} {
		if got := a.String(); got != want {
			t.Errorf("Action(%d).String() = %q, want %q", int(a), got, want)
		}
	}
}

func TestDecide(t *testing.T) {
	install := Decision{Action: ActionInstall}
	installed := Decision{Action: ActionInstalled}
	blocked := func(reason string) Decision { return Decision{Action: ActionBlocked, Reason: reason} }
	refused := func(reason string) Decision { return Decision{Action: ActionRefused, Reason: reason} }
	retire := func(names ...string) Decision { return Decision{Action: ActionInstall, Retire: names} }

	tests := []struct {
		name      string
		release   string
		target    string
		installed []string
		want      Decision
	}{
		// Generic packages.
		{"a generic package installs on a server", "agent-tools", "server", nil, install},
		{"a generic package installs on a client", "agent-tools", "client", nil, install},
		{"a generic package installs on a node with no target", "agent-tools", "", nil, install},
		{"a generic package installs on a node with an unknown target", "agent-tools", "desktop", nil, install},
		{"a generic package installs whatever service packs are installed", "agent-tools", "server",
			[]string{"SP-S041000005", "HF-S041000005-001", "SP-C041100001"}, install},
		{"a generic package named like a pack but not one installs", "SPARE", "server", nil, install},
		{"a generic package retires nothing", "agent-tools", "server", []string{"HF-S041000004-001", "SP-S041000004"}, install},

		// Already installed.
		{"an installed generic package is installed", "agent-tools", "server", []string{"x", "agent-tools"}, installed},
		{"an installed service pack is installed", "SP-S041000005", "server", []string{"SP-S041000005"}, installed},
		{"an installed hotfix is installed", "HF-S041000005-012", "server", []string{"SP-S041000005", "HF-S041000005-012"}, installed},
		{"an installed pack is installed even on a node whose target changed", "SP-S041000005", "client", []string{"SP-S041000005"}, installed},

		// Client vs server.
		{"a client hotfix is refused on a server", "HF-C041000005-012", "server", nil,
			refused("HF-C041000005-012 is a client pack; this node is a server")},
		{"a server service pack is refused on a client", "SP-S041000005", "client", nil,
			refused("SP-S041000005 is a server pack; this node is a client")},
		{"a service pack is refused on a node with no target", "SP-S041000005", "", nil,
			refused("SP-S041000005 is a server pack and this node has no target; start the agent with --target client|server")},
		{"a hotfix is refused on a node with no target", "HF-C041000005-012", "", []string{"SP-C041000005"},
			refused("HF-C041000005-012 is a client pack and this node has no target; start the agent with --target client|server")},
		{"a service pack is refused on a node with an unknown target", "SP-S041000005", "Server", nil,
			refused(`SP-S041000005 is a server pack and this node's target "Server" is neither client nor server; start the agent with --target client|server`)},
		{"a client service pack installs on a client", "SP-C041000005", "client", nil, install},

		// Release line.
		{"a service pack of any line installs on a node with none", "SP-S041100001", "server", nil, install},
		{"a service pack of any line installs on a node with only generic packages", "SP-S990000001", "server", []string{"agent-tools"}, install},
		{"a service pack of another line is refused", "SP-S041100001", "server", []string{"SP-S041000005"},
			refused("SP-S041100001 is for release 04.11.00; this node runs 04.10.00")},
		{"a service pack of another letter release is refused", "SP-S041001001", "server", []string{"SP-S041000005"},
			refused("SP-S041001001 is for release 04.10.01; this node runs 04.10.00")},
		{"a service pack of another major release is refused", "SP-S051000001", "server", []string{"SP-S041000005", "HF-S041000005-001"},
			refused("SP-S051000001 is for release 05.10.00; this node runs 04.10.00")},
		{"a hotfix of another line is refused", "HF-S041100001-001", "server", []string{"SP-S041000005"},
			refused("HF-S041100001-001 is for release 04.11.00; this node runs 04.10.00")},
		{"a service pack of the other target does not set the line", "SP-S041100001", "server", []string{"SP-C041000005"}, install},

		// A hotfix requires its service pack.
		{"a hotfix without its service pack is blocked", "HF-S041000005-012", "server", nil,
			blocked("requires SP-S041000005")},
		{"a hotfix without its service pack but with generic packages is blocked", "HF-S041000005-012", "server", []string{"agent-tools"},
			blocked("requires SP-S041000005")},
		{"a hotfix with an older service pack installed is blocked", "HF-S041000005-012", "server", []string{"SP-S041000004", "HF-S041000004-003"},
			blocked("requires SP-S041000005")},
		{"a hotfix whose service pack is of the other target is blocked", "HF-S041000005-012", "server", []string{"SP-C041000005"},
			blocked("requires SP-S041000005")},
		{"a hotfix with its service pack installs", "HF-S041000005-012", "server", []string{"SP-S041000005"}, install},
		{"a hotfix with its service pack and other hotfixes installs", "HF-S041000005-012", "server",
			[]string{"HF-S041000005-011", "agent-tools", "SP-S041000005", "HF-S041000005-013"}, install},
		{"a hotfix installs retiring nothing even with an older service pack left over", "HF-S041000005-012", "server",
			[]string{"SP-S041000004", "SP-S041000005"}, install},
		{"a hotfix with its service pack installs even if a newer one is installed too", "HF-S041000005-012", "server",
			[]string{"SP-S041000005", "SP-S041000006"}, install},
		{"a hotfix for a superseded service pack is refused", "HF-S041000005-012", "server", []string{"SP-S041000006"},
			refused("HF-S041000005-012 is for SP-S041000005, superseded by SP-S041000006")},
		{"a hotfix for a superseded service pack names the newest", "HF-S041000005-012", "server",
			[]string{"SP-S041000007", "HF-S041000007-001", "SP-S041000006"},
			refused("HF-S041000005-012 is for SP-S041000005, superseded by SP-S041000007")},

		// Older service packs.
		{"an older service pack is refused", "SP-S041000004", "server", []string{"SP-S041000005"},
			refused("SP-S041000004 is older than the installed SP-S041000005")},
		{"an older service pack is refused naming the newest installed", "SP-S041000004", "server",
			[]string{"SP-S041000005", "SP-S041000007", "HF-S041000007-002"},
			refused("SP-S041000004 is older than the installed SP-S041000007")},
		{"an older service pack of the other target does not count", "SP-S041000004", "server", []string{"SP-C041000005"}, install},

		// Newer service packs retire.
		{"a first service pack retires nothing", "SP-S041000005", "server", []string{"agent-tools"}, install},
		{"a newer service pack retires the older one and its hotfixes, sorted", "SP-S041000006", "server",
			[]string{"agent-tools", "SP-S041000005", "HF-S041000005-012", "HF-S041000005-003"},
			retire("HF-S041000005-003", "HF-S041000005-012", "SP-S041000005")},
		{"a newer service pack retires every older one left over", "SP-S041000009", "server",
			[]string{"SP-S041000005", "SP-S041000007", "HF-S041000007-001"},
			retire("HF-S041000007-001", "SP-S041000005", "SP-S041000007")},
		{"a newer service pack retires hotfixes whose service pack is gone", "SP-S041000006", "server",
			[]string{"HF-S041000004-001", "SP-S041000005"},
			retire("HF-S041000004-001", "SP-S041000005")},
		{"a service pack does not retire hotfixes of its own number", "SP-S041000006", "server",
			[]string{"SP-S041000005", "HF-S041000006-001"},
			retire("SP-S041000005")},
		{"a service pack does not retire packs of the other target", "SP-S041000006", "server",
			[]string{"SP-S041000005", "SP-C041000005", "HF-C041000005-001"},
			retire("SP-S041000005")},
		{"a service pack does not retire generic packages", "SP-S041000006", "server",
			[]string{"SP-S041000005", "aaa-tools"},
			retire("SP-S041000005")},
		{"a service pack retires a name listed twice once", "SP-S041000006", "server",
			[]string{"SP-S041000005", "SP-S041000005"},
			retire("SP-S041000005")},
		{"a client service pack retires on a client", "SP-C041000002", "client",
			[]string{"SP-C041000001", "HF-C041000001-007"},
			retire("HF-C041000001-007", "SP-C041000001")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decide(tt.release, tt.target, tt.installed)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decide(%q, %q, %q) =\n  %+v\nwant\n  %+v", tt.release, tt.target, tt.installed, got, tt.want)
			}
		})
	}
}

func TestDecideRejectsNamesThatDoNotParse(t *testing.T) {
	tests := []struct {
		name      string
		release   string
		installed []string
		msg       string
	}{
		{"an empty release", "", nil, "empty"},
		{"a malformed hotfix", "HF-S04100005-012", nil, "HF-S04100005-012"},
		{"a malformed installed name", "SP-S041000006", []string{"SP-S041000005", "bad name"}, "installed"},
		{"a malformed installed name even if the release is installed", "SP-S041000005", []string{"SP-S041000005", "SP-X1"}, "SP-X1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decide(tt.release, "server", tt.installed)
			if !errors.Is(err, manifest.ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Decide(%q, %q) error = %v; want one wrapping manifest.ErrInvalid that says %q", tt.release, tt.installed, err, tt.msg)
			}
		})
	}
}

// Decide reaches a verdict a node can reach again: once a service pack is
// installed and what it retires is removed, asking again says installed, and
// every hotfix it blocked is now installable.
func TestDecideAgreesWithItselfAfterItsDecisionIsApplied(t *testing.T) {
	installed := []string{"SP-S041000005", "HF-S041000005-001"}
	d, err := Decide("SP-S041000006", "server", installed)
	if err != nil || d.Action != ActionInstall {
		t.Fatalf("Decide = %+v, %v; want install", d, err)
	}
	blocked, err := Decide("HF-S041000006-002", "server", installed)
	if err != nil || blocked.Action != ActionBlocked {
		t.Fatalf("hotfix before its service pack: %+v, %v; want blocked", blocked, err)
	}
	after := []string{"SP-S041000006"}
	for _, name := range installed {
		if !slices.Contains(d.Retire, name) {
			after = append(after, name)
		}
	}
	if again, _ := Decide("SP-S041000006", "server", after); again.Action != ActionInstalled {
		t.Errorf("after installing: %+v, want installed", again)
	}
	if hf, _ := Decide("HF-S041000006-002", "server", after); hf.Action != ActionInstall {
		t.Errorf("hotfix after its service pack: %+v, want install", hf)
	}
	if old, _ := Decide("HF-S041000005-002", "server", after); old.Action != ActionRefused {
		t.Errorf("hotfix of the retired service pack: %+v, want refused", old)
	}
}

func TestSupersedesFollowsTheRetireRule(t *testing.T) {
	tests := []struct {
		newer, older string
		want         bool
	}{
		{"SP-S041000006", "SP-S041000005", true},
		{"SP-S041000006", "HF-S041000005-012", true},
		{"SP-S041000006", "HF-S041000006-001", false}, // a hotfix of the pack itself
		{"SP-S041000005", "SP-S041000006", false},     // older does not supersede newer
		{"SP-S041000006", "SP-C041000005", false},     // another target
		{"SP-S041000006", "SP-S051000005", false},     // another release line
		{"HF-S041000006-001", "SP-S041000005", false}, // a hotfix supersedes nothing
		{"SP-S041000006", "agent-tools", false},       // generic packages stay
		{"agent-tools", "SP-S041000005", false},
	}
	for _, tt := range tests {
		if got := Supersedes(tt.newer, tt.older); got != tt.want {
			t.Errorf("Supersedes(%s, %s) = %v, want %v", tt.newer, tt.older, got, tt.want)
		}
		// Whatever Supersedes says, Decide retires when the older is
		// installed and the newer installs.
		if tt.want {
			d, err := Decide(tt.newer, "server", []string{tt.older})
			if err != nil || d.Action != ActionInstall || len(d.Retire) != 1 || d.Retire[0] != tt.older {
				t.Errorf("Decide(%s) with %s installed = %+v, %v; want it retired", tt.newer, tt.older, d, err)
			}
		}
	}
}
