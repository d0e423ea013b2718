package lifecycle

import (
	"strings"
	"time"

	"github.com/patchctl/patchctl/manifest"
)

// Plan is what the deployments of one release ask of one node.
type Plan struct {
	Targeted bool
	// Assigned: an assigned deployment matches, so the node installs
	// without being asked.
	Assigned bool
	// Windows of the assigned deployments; none is any time.
	Windows []Window
}

// Open reports whether an assigned install may run at now, and if not, when
// it may next.
func (p Plan) Open(now time.Time) (bool, time.Time) {
	if len(p.Windows) == 0 {
		return true, now
	}
	var next time.Time
	for _, w := range p.Windows {
		if w.Contains(now) {
			return true, now
		}
		if n := w.NextOpen(now); next.IsZero() || n.Before(next) {
			next = n
		}
	}
	return false, next
}

// WindowText names the plan's windows for a status reason.
func (p Plan) WindowText() string {
	var s []string
	for _, w := range p.Windows {
		s = append(s, w.String())
	}
	return strings.Join(s, " or ")
}

// PlanFor returns what ix's deployments of e ask of a node with facts f.
// Deployments whose selector or window does not parse match nothing: the
// index is signed, but an agent older than the operator's CLI may not know
// a newer syntax, and installing on a guess is worse than not installing.
func PlanFor(ix *manifest.Index, e manifest.IndexEntry, f NodeFacts) Plan {
	var p Plan
	if !e.ForSite(f.Site) {
		return p
	}
	anyTime := false
	for _, d := range ix.DeploymentsOf(e.Name) {
		sel, err := ParseSelector(d.Selector)
		if err != nil || !sel.Matches(f) {
			continue
		}
		w, err := ParseWindow(d.Window)
		if err != nil {
			continue
		}
		p.Targeted = true
		if d.Mode == manifest.ModeAssigned {
			p.Assigned = true
			if w.IsZero() {
				anyTime = true
			}
			p.Windows = append(p.Windows, w)
		}
	}
	if anyTime {
		p.Windows = nil
	}
	return p
}

// DeployedToSite reports whether a deployment of e may match a node of
// site: a proxy replicates only those releases.
func DeployedToSite(ix *manifest.Index, e manifest.IndexEntry, site string) bool {
	if !e.ForSite(site) {
		return false
	}
	for _, d := range ix.DeploymentsOf(e.Name) {
		sel, err := ParseSelector(d.Selector)
		if err != nil {
			continue
		}
		if s, ok := sel.site(); !ok || s == site {
			return true
		}
	}
	return false
}

// site returns the value of the selector's site term, if it has one.
func (s Selector) site() (string, bool) {
	for _, t := range s.terms {
		if t.key == keySite {
			return t.value, true
		}
	}
	return "", false
}
