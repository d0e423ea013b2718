package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/filecoin-project/go-clock"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
)

// Role is what an agent does in the tree of sites.
type Role string

const (
	// RoleOrigin holds every published release and the signed index; it
	// is the root of the tree.
	RoleOrigin Role = "origin"
	// RoleProxy is a site's cache: it replicates the releases meant for
	// its site over the WAN once, serves them to the site and tracks which
	// site peers hold what. It never installs.
	RoleProxy Role = "proxy"
	// RoleNode is a client, server or appliance: it fetches from its site's
	// peers and proxy, verifies, installs and reports.
	RoleNode Role = "node"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleOrigin, RoleProxy, RoleNode:
		return r, nil
	}
	return "", fmt.Errorf("role %q: want origin, proxy or node", s)
}

// PeerConfig configures the swarm peer that an agent, `patchctl serve` and
// `patchctl fetch` run. The zero value of each optional field is a sensible
// default.
type PeerConfig struct {
	DataDir     string
	ListenAddrs []string // default p2p.DefaultListenAddrs()
	// NetworkKey closes the swarm to nodes with the same pre-shared key.
	NetworkKey []byte
	// Allow, if not empty, are the only peers the node talks to.
	Allow []peer.ID
	// MaxUploadRate caps what the peer serves, in bytes/s; 0 is unlimited.
	MaxUploadRate int
	// Peers is how many peers the host holds connections to at once (see
	// p2p.HostConfig); 0 is libp2p's defaults, or defaultServingPeers for
	// an origin or proxy agent.
	Peers int
	// Logger receives the log; nil discards.
	Logger *slog.Logger

	// Gater, if set, decides which peers and addresses the host may dial
	// and accept, beside Allow; the testnet uses it to make hosts dial one
	// another only through shaped links.
	Gater connmgr.ConnectionGater
	// HostReady, if set, is called with the host before the peer serves
	// or its agent dials anyone: the testnet wires its links with it.
	HostReady func(host.Host)
	// DialTCP, if set, opens the host's outgoing TCP connections (see
	// p2p.HostConfig).
	DialTCP tcp.DialerForAddr
}

// Config configures an agent: the settings every role shares, and those of
// exactly one role (Origin, Proxy or Node), which decides what it is.
type Config struct {
	PeerConfig
	// Trust is the trust root envelope the operator installed (--trust):
	// releases and the index must be signed by it, or by a root it
	// rotated to (see trust.go), which the data dir keeps.
	Trust []byte
	// ResetTrust starts the data dir's chain of roots anew from Trust,
	// for a fleet whose root was replaced rather than rotated.
	ResetTrust bool
	// PollInterval is how often the agent asks its upstreams for a newer
	// index, reports its status and retries failed work (default 1 min).
	PollInterval time.Duration
	// Clock is the time the agent reads and waits on; nil is the real one.
	Clock clock.Clock

	Origin *OriginConfig
	Proxy  *ProxyConfig
	Node   *NodeConfig
}

// OriginConfig makes the agent the origin. The origin's own settings are
// those every role shares; its index comes from the admin API and from the
// index file of its data dir.
type OriginConfig struct{}

// Uplink places a proxy or a node in the tree: its site, and where it polls
// for the index and gets releases.
type Uplink struct {
	// Site names the agent's site; releases of the index that name sites
	// are replicated and installed only there.
	Site string
	// Upstreams are a node's site proxy, or a proxy's origin or parent
	// proxy, the first preferred.
	Upstreams []peer.AddrInfo
}

// ProxyConfig makes the agent a site's proxy.
type ProxyConfig struct {
	Uplink
	// Siblings are proxies of other sites to share chunks with, so that
	// the origin need not send a copy per site.
	Siblings []peer.AddrInfo
	// WANRate caps downloads from upstreams and siblings, in bytes/s; 0
	// is unlimited.
	WANRate int
	// CacheQuota bounds the stored chunks in bytes (0: no bound). Chunks
	// of releases the site still needs are pinned and never evicted.
	CacheQuota int64
	// OfflineAfter is how many poll intervals a site node may stay silent
	// before it is shown offline and stops holding releases pinned
	// (default 3).
	OfflineAfter int
}

// NodeConfig makes the agent a node that installs.
type NodeConfig struct {
	Uplink
	// Target says which packs apply to the node: "client" or "server"
	// (the C or S of a pack's name); generic packages apply to both.
	Target string
	// Labels are the node's labels, for deployments' selectors.
	Labels map[string]string
	// InstallHook is the node's install command, run with /bin/sh -c in
	// the release's directory after its files are in place.
	InstallHook string
	// AllowReleaseCommands lets the node run the install command a release
	// carries (signed with it); without it such a release fails to install.
	AllowReleaseCommands bool
	// HookTimeout bounds an install command (default 10 min).
	HookTimeout time.Duration
	// KeepServicePacks is how many retired service packs, the newest, a
	// node keeps the files and chunks of, for a rollback; it frees those
	// of older ones and of retired hotfixes (default 1; -1 keeps none).
	KeepServicePacks int
	// KeepChunks keeps in the store the chunks of the releases the node
	// installed. Without it (the default), once the node's site proxy
	// holds a release whole, the node lets go of its chunks: the installed
	// files are then its one copy, and the next version takes from them
	// every chunk they hold (seeds) before it asks peers.
	KeepChunks bool
	// MDNS finds peers of the same site on the LAN by multicast DNS,
	// beside those the site's tracker names. It needs a multicast-capable
	// interface.
	MDNS bool
	// NoSwarm makes the node fetch from its upstreams only, never from
	// site peers: the baseline a swarm is measured against.
	NoSwarm bool
	// BootID returns an identity of the machine's current boot; a
	// release installed with a restart required takes effect once it
	// changes. Default: the kernel's boot ID.
	BootID func() (string, error)
}

// Defaults of the settings, in one place.
const (
	defaultPoll         = time.Minute
	defaultOfflineAfter = 3
	defaultHookTimeout  = 10 * time.Minute
	// defaultKeepServicePacks: the service pack before the installed one
	// stays for a rollback.
	defaultKeepServicePacks = 1
	// defaultServingPeers is how many peers an origin or a proxy holds at
	// once unless told otherwise: every node of a large site, or the
	// proxies of thousands of sites. libp2p's defaults stop at 192 peers
	// and 256 inbound connections (docs/decisions/0018).
	defaultServingPeers = 4096
)

// BootIDFile is where Linux keeps an identity of the current boot.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// ReadBootID reads a boot identity from file.
func ReadBootID(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("boot ID: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("boot ID: %s is empty", file)
	}
	return id, nil
}

func kernelBootID() (string, error) { return ReadBootID(BootIDFile) }

// role returns the role the config chooses.
func (c *Config) role() Role {
	switch {
	case c.Origin != nil:
		return RoleOrigin
	case c.Proxy != nil:
		return RoleProxy
	}
	return RoleNode
}

// Validate checks the config: a data dir and a trust root, exactly one
// role, and that role's settings.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("agent: a data dir is required")
	}
	if len(c.Trust) == 0 {
		return errors.New("agent: a trust root is required")
	}
	roles := 0
	for _, set := range []bool{c.Origin != nil, c.Proxy != nil, c.Node != nil} {
		if set {
			roles++
		}
	}
	if roles != 1 {
		return fmt.Errorf("agent: choose exactly one role (origin, proxy or node), not %d", roles)
	}
	if c.PollInterval < 0 || c.MaxUploadRate < 0 || c.Peers < 0 {
		return errors.New("agent: the poll interval, upload rate and peer count must not be negative")
	}
	switch {
	case c.Proxy != nil:
		p := c.Proxy
		if err := p.Uplink.validate(RoleProxy); err != nil {
			return err
		}
		if p.WANRate < 0 || p.CacheQuota < 0 || p.OfflineAfter < 0 {
			return errors.New("agent: the WAN rate, cache quota and offline-after must not be negative")
		}
	case c.Node != nil:
		n := c.Node
		if err := n.Uplink.validate(RoleNode); err != nil {
			return err
		}
		switch n.Target {
		case "", "client", "server":
		default:
			return fmt.Errorf("agent: target %q: want client or server", n.Target)
		}
		for k, v := range n.Labels {
			if _, _, err := lifecycle.ParseLabel(k + "=" + v); err != nil {
				return fmt.Errorf("agent: %w", err)
			}
		}
		if n.HookTimeout < 0 {
			return errors.New("agent: the hook timeout must not be negative")
		}
		if n.KeepServicePacks < -1 {
			return fmt.Errorf("agent: keep %d service packs: want -1 (none), 0 (the default) or more", n.KeepServicePacks)
		}
	}
	return nil
}

func (u *Uplink) validate(r Role) error {
	if err := manifest.ValidateSite(u.Site); err != nil {
		return fmt.Errorf("agent: a %s needs its site: %w", r, err)
	}
	if len(u.Upstreams) == 0 {
		return fmt.Errorf("agent: a %s needs at least one upstream", r)
	}
	return nil
}

// withDefaults returns c with every unset setting at its default and the
// data dir absolute, since install hooks run inside the releases' folders
// and are handed paths under it.
func (c Config) withDefaults() (Config, error) {
	dir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return c, err
	}
	c.DataDir = dir
	if c.PollInterval == 0 {
		c.PollInterval = defaultPoll
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Peers == 0 && (c.Origin != nil || c.Proxy != nil) {
		c.Peers = defaultServingPeers
	}
	if p := c.Proxy; p != nil {
		cp := *p
		if cp.OfflineAfter == 0 {
			cp.OfflineAfter = defaultOfflineAfter
		}
		c.Proxy = &cp
	}
	if n := c.Node; n != nil {
		cn := *n
		if cn.HookTimeout == 0 {
			cn.HookTimeout = defaultHookTimeout
		}
		switch cn.KeepServicePacks {
		case 0:
			cn.KeepServicePacks = defaultKeepServicePacks
		case -1:
			cn.KeepServicePacks = 0
		}
		if cn.BootID == nil {
			cn.BootID = kernelBootID
		}
		c.Node = &cn
	}
	return c, nil
}
