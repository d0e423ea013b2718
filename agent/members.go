package agent

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
)

// members are a proxy's site nodes as its tracker knows them: what each
// holds, its facts and its deployments, and when it last reported. A node
// silent for offlineAfter is offline: shown so, and holding no release
// pinned. One silent for forgetAfter is forgotten.
type members struct {
	db           *stateDB
	log          *slog.Logger
	offlineAfter time.Duration

	mu   sync.Mutex
	byID map[peer.ID]*member
	full bool // the bound was reached, and said
}

// member is a site node as the tracker knows it.
type member struct {
	releases map[string]string // manifest CID → fleet.StateFetching, StateHave or StateInstalled
	seen     time.Time
	status   fleet.NodeStatus
}

// forgetAfter is how long a silent node stays in the site's view: long
// enough for an operator to see a machine that is off for a week, short
// enough that peers that claimed the site once do not pile up forever.
const forgetAfter = 14 * 24 * time.Hour

// maxSwarmPeers bounds the site peers a tracker names to one node: enough
// to swarm (the proxy is always a peer besides), few enough that a large
// site is not a mesh of connections; see docs/decisions/0002.
const maxSwarmPeers = 3

func loadMembers(db *stateDB, log *slog.Logger, offlineAfter time.Duration) (*members, error) {
	m := &members{db: db, log: log, offlineAfter: offlineAfter, byID: map[peer.ID]*member{}}
	err := db.each(bucketMembers, func(id string, v []byte) error {
		p, err := peer.Decode(id)
		if err != nil {
			return nil
		}
		var st fleet.NodeStatus
		if err := json.Unmarshal(v, &st); err != nil {
			return err
		}
		m.byID[p] = &member{releases: map[string]string{}, seen: st.Seen, status: st}
		return nil
	})
	return m, err
}

// record takes from's tracker report at now. It reports whether what from
// reported of its deployments changed (which is worth a report upstream),
// and false for a new node beyond the bound of a site.
func (m *members) record(from peer.ID, r *fleet.TrackerReport, now time.Time) (changed, ok bool) {
	mb := &member{releases: map[string]string{}, seen: now}
	for _, rel := range r.Releases {
		mb.releases[rel.CID] = rel.State
	}
	mb.status = fleet.NodeStatus{ID: from.String(), Target: r.Target, Labels: r.Labels, Seen: now.UTC(), Deployments: r.Deployments}
	m.mu.Lock()
	prev := m.byID[from]
	if prev == nil && len(m.byID) >= fleet.MaxSiteNodes {
		if !m.full {
			m.log.Warn("agent: the site has as many nodes as a proxy tracks; new ones are not tracked until others are forgotten", "nodes", len(m.byID))
		}
		m.full = true
		m.mu.Unlock()
		return false, false
	}
	m.byID[from] = mb
	m.mu.Unlock()
	changed = prev == nil || !sameDeployments(prev.status.Deployments, r.Deployments) || m.isOffline(prev, now)
	if changed {
		// Kept so that a restarted proxy still knows its site.
		if err := m.db.put(bucketMembers, from.String(), mb.status); err != nil {
			m.log.Warn("agent: keep node status", "node", from, "err", err)
		}
	}
	return changed, true
}

func (m *members) isOffline(mb *member, now time.Time) bool {
	return now.Sub(mb.seen) > m.offlineAfter
}

// holders returns up to maxSwarmPeers online nodes other than from that
// hold or fetch the release of manifest CID want.
func (m *members) holders(from peer.ID, want string, now time.Time) []peer.ID {
	if want == "" {
		return nil
	}
	m.mu.Lock()
	var candidates []peer.ID
	for id, other := range m.byID {
		if id != from && other.releases[want] != "" && !m.isOffline(other, now) {
			candidates = append(candidates, id)
		}
	}
	m.mu.Unlock()
	return swarmPeers(from, candidates, maxSwarmPeers)
}

// view returns the site's nodes as reported, each marked offline if it is,
// and forgets the nodes silent for forgetAfter.
func (m *members) view(now time.Time) []fleet.NodeStatus {
	m.mu.Lock()
	var forgot []peer.ID
	out := make([]fleet.NodeStatus, 0, len(m.byID))
	for id, mb := range m.byID {
		if now.Sub(mb.seen) > forgetAfter {
			delete(m.byID, id)
			forgot = append(forgot, id)
			continue
		}
		st := mb.status
		st.Offline = m.isOffline(mb, now)
		out = append(out, st)
	}
	if len(forgot) > 0 {
		m.full = false
	}
	m.mu.Unlock()
	for _, id := range forgot {
		m.log.Info("agent: site node forgotten after a long silence", "node", id)
		if err := m.db.delete(bucketMembers, id.String()); err != nil {
			m.log.Warn("agent: forget node", "node", id, "err", err)
		}
	}
	slices.SortFunc(out, func(x, y fleet.NodeStatus) int { return strings.Compare(x.ID, y.ID) })
	return out
}

// doneWith reports whether the site's online nodes are done with e: every
// one that e's deployments target has it installed, retired or refused.
// With no online node at all nothing is known, and a release is not done.
func doneWith(ix *manifest.Index, e manifest.IndexEntry, site string, nodes []fleet.NodeStatus) bool {
	online := 0
	for _, n := range nodes {
		if n.Offline {
			continue
		}
		online++
		f := lifecycle.NodeFacts{Site: site, Target: n.Target, Node: n.ID, Labels: n.Labels}
		if !lifecycle.PlanFor(ix, e, f).Targeted {
			continue
		}
		state := lifecycle.Pending
		for _, d := range n.Deployments {
			if d.Release == e.Name && (d.CID == "" || d.CID == e.CID) {
				state = d.State
			}
		}
		switch state {
		case lifecycle.Installed, lifecycle.RestartRequired, lifecycle.Retired, lifecycle.Refused:
		default:
			return false
		}
	}
	return online > 0
}

// swarmPeers chooses up to n of candidates for node from to swarm with: those
// whose pair with from hashes lowest. The choice is stable, so a node asking
// again while it fetches is named the peers it already has instead of new
// ones to dial, and symmetric in the pair, so two nodes that chose each
// other share one connection.
func swarmPeers(from peer.ID, candidates []peer.ID, n int) []peer.ID {
	score := func(other peer.ID) uint64 {
		x, y := string(from), string(other)
		if y < x {
			x, y = y, x
		}
		sum := sha256.Sum256([]byte(x + y))
		return binary.BigEndian.Uint64(sum[:8])
	}
	scores := make(map[peer.ID]uint64, len(candidates))
	for _, c := range candidates {
		scores[c] = score(c)
	}
	slices.SortFunc(candidates, func(a, b peer.ID) int { return cmp.Compare(scores[a], scores[b]) })
	return candidates[:min(len(candidates), n)]
}

func sameDeployments(x, y []fleet.DeploymentStatus) bool {
	// Byte counts move all the time while downloading; the state is what
	// is worth a write and a report upstream.
	return slices.EqualFunc(x, y, func(a, b fleet.DeploymentStatus) bool {
		return a.Release == b.Release && a.CID == b.CID && a.State == b.State && a.Reason == b.Reason && a.Have == b.Have
	})
}
