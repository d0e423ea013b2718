package adminapi

import (
	"time"

	"github.com/patchctl/patchctl/fleet"
)

// Health is the answer to GET /v1/health: who the agent is and which index
// it follows.
type Health struct {
	PeerID       string            `json:"peer_id"`
	Role         string            `json:"role"` // origin, proxy or node
	Site         string            `json:"site,omitempty"`
	Target       string            `json:"target,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Addrs        []string          `json:"addrs"`
	IndexVersion uint64            `json:"index_version"`
	IndexExpires time.Time         `json:"index_expires,omitzero"`
	TrustVersion uint64            `json:"trust_version"`
	// Warnings are what an operator should act on soon, such as an index
	// about to expire.
	Warnings []string `json:"warnings,omitempty"`
}

// IndexPosted answers a posted index: the version the origin now follows.
type IndexPosted struct {
	Version uint64 `json:"version"`
}

// RootPosted answers a posted trust root: the version the origin now
// follows.
type RootPosted struct {
	Version uint64 `json:"version"`
}

// IngestResult answers a posted release: the chunks the origin still lacks,
// or none once it took the release.
type IngestResult struct {
	Name    string   `json:"name"`
	CID     string   `json:"cid"`
	Missing []string `json:"missing"`
	Stored  bool     `json:"stored"`
}

// RetryRequest orders the failed installs of Release to run again: on
// every node where it failed, or on Node only.
type RetryRequest struct {
	Release string `json:"release"`
	Node    string `json:"node,omitempty"`
}

// RetryResult answers a retry: the generation ordered, and how many of the
// nodes the order is for are failed now, as the origin last heard.
type RetryResult struct {
	Release    string `json:"release"`
	Node       string `json:"node,omitempty"`
	Generation uint64 `json:"generation"`
	Failed     int    `json:"failed"`
}

// InstallResult answers an install request.
type InstallResult struct {
	Release string `json:"release"`
	// State is the release's state on the node after the request:
	// pending, downloading or downloaded while the install is on its way.
	State string `json:"state"`
}

// NodeStatus is a node's answer to GET /v1/status: its releases.
type NodeStatus struct {
	Deployments []fleet.DeploymentStatus `json:"deployments"`
}

// FleetStatus is the fleet view of the releases of the index: per release
// and site, the nodes targeted, how many hold every chunk, how many
// installed, and each failure with its node and reason.
type FleetStatus struct {
	IndexVersion uint64          `json:"index_version"`
	IndexExpires time.Time       `json:"index_expires,omitzero"`
	Warnings     []string        `json:"warnings,omitempty"`
	Releases     []ReleaseStatus `json:"releases"`
	// LabelKeys are the keys of the labels the nodes below report, for
	// checking a selector before it is signed.
	LabelKeys []string `json:"label_keys,omitempty"`
	// Unenrolled lists peers whose status reports were refused because
	// the signed index does not enrol them for the sites they report:
	// a proxy not enrolled yet (patchctl enrol), or a peer posing as one.
	Unenrolled []Unenrolled `json:"unenrolled,omitempty"`
}

// Unenrolled is a peer that reported sites it is not enrolled for.
type Unenrolled struct {
	Peer  string    `json:"peer"`
	Sites []string  `json:"sites"`
	Seen  time.Time `json:"seen"`
}

// ReleaseStatus is one release of the fleet view.
type ReleaseStatus struct {
	Name string `json:"name"`
	// Withdrawn: deployed nowhere any more; the sites count the nodes
	// that had it (Uninstall: its uninstall command runs where it was
	// installed).
	Withdrawn bool         `json:"withdrawn,omitempty"`
	Uninstall bool         `json:"uninstall,omitempty"`
	Sites     []SiteCounts `json:"sites"`
}

// SiteCounts is one release in one site. Only nodes count: proxies and the
// origin cache and serve, never install.
type SiteCounts struct {
	Site       string `json:"site"`
	Nodes      int    `json:"nodes"`      // targeted by a deployment
	Replicated int    `json:"replicated"` // of those, holding every chunk
	Installed  int    `json:"installed"`  // installed, or installed until a restart
	// Uninstalled counts the nodes where a withdrawn release was
	// uninstalled.
	Uninstalled int            `json:"uninstalled,omitempty"`
	States      map[string]int `json:"states"` // every targeted node's state
	Failed      []NodeReason   `json:"failed"` // failed or refused
	Blocked     []NodeReason   `json:"blocked,omitempty"`
	// Downloading is the progress of the nodes still downloading.
	Downloading []NodeProgress `json:"downloading,omitempty"`
	// Offline lists the targeted nodes their proxy has not heard from for
	// a while, with when it last did; their counts are as last reported.
	Offline []NodeSeen `json:"offline,omitempty"`
	// ProxyReplicated: the site's proxy holds the release whole.
	ProxyReplicated bool `json:"proxy_replicated"`
}

// NodeProgress is a node's download.
type NodeProgress struct {
	Node    string  `json:"node"`
	Bytes   int64   `json:"bytes"`
	Total   int64   `json:"total"`
	Percent float64 `json:"percent"`
}

// NodeReason is a node and why it is where it is.
type NodeReason struct {
	Node   string `json:"node"`
	State  string `json:"state"`
	Reason string `json:"reason"`
}

// NodeSeen is a node and when its proxy last heard from it.
type NodeSeen struct {
	Node     string    `json:"node"`
	LastSeen time.Time `json:"last_seen"`
}

// About is a node's list of releases: installed, retired, and those on
// their way or stopped (failed, blocked, available, refused), with why.
type About struct {
	Installed []AboutEntry `json:"installed"`
	Retired   []AboutEntry `json:"retired"`
	Others    []AboutEntry `json:"others"`
}

// AboutEntry is one release of About.
type AboutEntry struct {
	Name            string    `json:"name"`
	State           string    `json:"state"`
	Reason          string    `json:"reason,omitempty"`
	InstalledAt     time.Time `json:"installed_at,omitzero"`
	RestartRequired bool      `json:"restart_required,omitempty"`
	RetiredAt       time.Time `json:"retired_at,omitzero"`
	RetiredBy       string    `json:"retired_by,omitempty"`
}

// Removal is what removing a release from an agent's data dir did.
type Removal struct {
	Name string `json:"removed"`
	CID  string `json:"cid,omitempty"`
	// Unreadable is why the release's envelope did not read, when it was
	// removed by its name alone.
	Unreadable string `json:"unreadable,omitempty"`
}

// GCRequest asks an agent to collect its chunk store's garbage.
type GCRequest struct {
	// GraceSeconds keeps unpinned chunks written more recently than this
	// (a download may be about to pin them); 0 keeps none.
	GraceSeconds int64 `json:"grace_seconds"`
}

// GCReport is what a garbage collection did.
type GCReport struct {
	RemovedChunks int   `json:"removed_chunks"`
	RemovedBytes  int64 `json:"removed_bytes"`
	PinnedChunks  int   `json:"pinned_chunks"`
	FreshChunks   int   `json:"fresh_chunks"`
	TempsRemoved  int   `json:"temps_removed"`
	// PacksRemoved and PacksWritten count pack files deleted and written
	// by repacking; SpaceReclaimed is the disk space the store gave back.
	PacksRemoved   int   `json:"packs_removed"`
	PacksWritten   int   `json:"packs_written"`
	SpaceReclaimed int64 `json:"space_reclaimed"`
	// Repinned names the releases an origin's index lists whose pin was
	// gone, pinned again before collecting.
	Repinned []string `json:"repinned,omitempty"`
	// Released names the releases a node was done with whose files and
	// chunks it let go: retired (beyond the service packs it keeps for a
	// rollback), uninstalled, or withdrawn before it installed them.
	Released []string `json:"released,omitempty"`
	// TreesRemoved counts their installed file trees removed, and
	// LeftoversRemoved the staging directories and temporary files killed
	// agents left.
	TreesRemoved     int `json:"trees_removed,omitempty"`
	LeftoversRemoved int `json:"leftovers_removed,omitempty"`
}

// FsckRequest asks an agent to check every chunk of its store.
type FsckRequest struct {
	// Repair also fetches the missing chunks of the releases held from
	// the agent's peers; corrupt chunks are quarantined and fetched again
	// either way.
	Repair bool `json:"repair"`
}

// FsckReport is what a check of an agent's store found.
type FsckReport struct {
	Chunks   int           `json:"chunks"`
	OK       bool          `json:"ok"`
	Problems []FsckProblem `json:"problems"`
	// Mending counts the chunks the agent is fetching again from its
	// peers.
	Mending int `json:"mending"`
}

// FsckProblem is one chunk corrupt or missing.
type FsckProblem struct {
	CID  string   `json:"cid"`
	Kind string   `json:"kind"` // "corrupt" (now quarantined) or "missing"
	Pins []string `json:"pins,omitempty"`
}
