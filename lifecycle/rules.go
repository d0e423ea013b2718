package lifecycle

import (
	"fmt"
	"sort"

	"github.com/patchctl/patchctl/manifest"
)

// Action is what Decide says to do with a release on a node.
type Action int

const (
	ActionInstall   Action = iota // install it now
	ActionInstalled               // already installed: nothing to do (idempotent)
	ActionBlocked                 // wait: a prerequisite is missing; retried when installs change
	ActionRefused                 // never on this node
)

func (a Action) String() string {
	switch a {
	case ActionInstall:
		return "install"
	case ActionInstalled:
		return "installed"
	case ActionBlocked:
		return "blocked"
	case ActionRefused:
		return "refused"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Decision is the outcome of Decide.
type Decision struct {
	Action Action
	Reason string   // for blocked/refused: a sentence an operator can act on, e.g. "requires SP-S041000005"
	Retire []string // on install of a service pack: installed hotfixes and older service packs it retires, sorted
}

// Decide applies the pack rules to installing release on a node of the given target ("client", "server" or "") whose installed (not retired) releases are installed.
//
// It is pure so that every node, and a test, reaches the same verdict from the
// same facts; the caller owns the install state and applies Retire.
func Decide(release string, target string, installed []string) (Decision, error) {
	p, err := manifest.ParsePackName(release)
	if err != nil {
		return Decision{}, fmt.Errorf("decide: %w", err)
	}
	have := make([]manifest.PackID, 0, len(installed))
	for _, name := range installed {
		id, err := manifest.ParsePackName(name)
		if err != nil {
			return Decision{}, fmt.Errorf("decide %s: installed list: %w", release, err)
		}
		have = append(have, id)
	}
	// Checked only after every installed name parsed, so that a corrupt
	// install record is reported whichever release is asked about.
	for _, h := range have {
		if h.Name == release {
			return Decision{Action: ActionInstalled}, nil
		}
	}
	if p.Kind == manifest.Generic {
		return Decision{Action: ActionInstall}, nil
	}
	refused := func(format string, args ...any) (Decision, error) {
		return Decision{Action: ActionRefused, Reason: fmt.Sprintf(format, args...)}, nil
	}

	packTarget := targetName(p.Target)
	switch target {
	case "client", "server":
		if target != packTarget {
			return refused("%s is a %s pack; this node is a %s", p.Name, packTarget, target)
		}
	case "":
		return refused("%s is a %s pack and this node has no target; start the agent with --target client|server", p.Name, packTarget)
	default:
		return refused("%s is a %s pack and this node's target %q is neither client nor server; start the agent with --target client|server", p.Name, packTarget, target)
	}

	// Only service packs of the node's own target say which release line it
	// runs: a pack of the other target cannot have been installed under
	// these rules, and if one was by other means it tells nothing about
	// this product.
	var onLine bool  // an SP of p's line is installed
	var other string // the release line of an installed SP of another line
	var newest *manifest.PackID
	for i, h := range have {
		if h.Kind != manifest.ServicePack || h.Target != p.Target {
			continue
		}
		if sameLine(h, p) {
			onLine = true
			if newest == nil || h.ServicePack > newest.ServicePack {
				newest = &have[i]
			}
		} else if other == "" || h.Release() > other {
			other = h.Release()
		}
	}
	if !onLine && other != "" {
		return refused("%s is for release %s; this node runs %s", p.Name, p.Release(), other)
	}

	if p.Kind == manifest.Hotfix {
		sp := p.ServicePackName()
		for _, h := range have {
			if h.Name == sp {
				return Decision{Action: ActionInstall}, nil
			}
		}
		if newest != nil && newest.ServicePack > p.ServicePack {
			return refused("%s is for %s, superseded by %s", p.Name, sp, newest.Name)
		}
		// No service pack yet, or an older one: installing sp unblocks it.
		return Decision{Action: ActionBlocked, Reason: "requires " + sp}, nil
	}

	if newest != nil && newest.ServicePack > p.ServicePack {
		return refused("%s is older than the installed %s", p.Name, newest.Name)
	}
	var retire []string
	seen := make(map[string]bool)
	for _, h := range have {
		if h.Kind != manifest.Generic && h.Target == p.Target && sameLine(h, p) &&
			h.ServicePack < p.ServicePack && !seen[h.Name] {
			seen[h.Name] = true
			retire = append(retire, h.Name)
		}
	}
	sort.Strings(retire)
	return Decision{Action: ActionInstall, Retire: retire}, nil
}

// sameLine reports whether two HF/SP packs are of the same release line.
func sameLine(a, b manifest.PackID) bool {
	return a.Major == b.Major && a.Minor == b.Minor && a.Letter == b.Letter
}

func targetName(t byte) string {
	if t == 'C' {
		return "client"
	}
	return "server"
}

// Supersedes reports whether installing newer retires older on a node, by
// the rules Decide applies: newer is a service pack, and older a service
// pack or hotfix of the same release line and target with a lower service
// pack number. A proxy need not hold a superseded release for its site.
func Supersedes(newer, older string) bool {
	n, err := manifest.ParsePackName(newer)
	if err != nil || n.Kind != manifest.ServicePack {
		return false
	}
	o, err := manifest.ParsePackName(older)
	if err != nil || o.Kind == manifest.Generic {
		return false
	}
	return o.Target == n.Target && sameLine(o, n) && o.ServicePack < n.ServicePack
}
