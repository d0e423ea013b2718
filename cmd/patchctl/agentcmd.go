package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/lifecycle"
)

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:      "agent",
		Usage:     "run the long-lived agent of an origin, proxy or node: follow the signed index, replicate, install, report status, serve the admin API",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "read settings from a YAML `FILE` whose keys are these flags' names (and data-dir); flags given on the command line win"},
			&cli.StringFlag{Name: "role", Value: "node", Usage: "`ROLE`: origin, proxy or node"},
			&cli.StringFlag{Name: "trust", Usage: "trust root `FILE` (required); the data dir follows the roots it rotates to"},
			&cli.BoolFlag{Name: "reset-trust", Usage: "follow the --trust root from now on, although the data dir follows another (for a root replaced, not rotated)"},
			&cli.StringFlag{Name: "site", Usage: "proxy, node: the agent's `SITE` name"},
			&cli.StringSliceFlag{Name: "upstream", Usage: "proxy, node: upstream `MULTIADDR` ending in /p2p/<peer-id> (repeatable): a node's site proxy, a proxy's origin or parent proxy"},
			&cli.StringSliceFlag{Name: "listen", Usage: "listen `MULTIADDR` (repeatable); default all interfaces, TCP and QUIC"},
			&cli.StringFlag{Name: "network-key", Usage: "private network key `FILE` (swarm.key): talk only to agents with the same key (TCP only)"},
			&cli.StringSliceFlag{Name: "allow", Usage: "only talk to this `PEER-ID` (repeatable)"},
			&cli.IntFlag{Name: "max-upload-rate", Usage: "cap what this agent serves, in `BYTES_PER_S` (0: unlimited)"},
			&cli.DurationFlag{Name: "poll", Value: time.Minute, Usage: "how often to ask the upstream for a newer index and report status"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log `LEVEL`: debug, info, warn or error"},
			&cli.StringSliceFlag{Name: "sibling", Usage: "proxy: a proxy of another site to share chunks with, `MULTIADDR` (repeatable)"},
			&cli.StringFlag{Name: "wan-rate", Usage: "proxy: cap downloads over the WAN at `RATE` (e.g. 20Mbit)"},
			&cli.StringFlag{Name: "cache-quota", Usage: "proxy: keep chunks under `SIZE` (e.g. 50GiB); releases the site still needs are never evicted"},
			&cli.IntFlag{Name: "offline-after", Value: 3, Usage: "proxy: show a site node offline, and stop keeping releases for it, after this many poll intervals of silence"},
			&cli.StringFlag{Name: "target", Usage: "node: which packs apply: client or server (the C or S of a pack's name); generic packages apply to both"},
			&cli.StringSliceFlag{Name: "label", Usage: "node: `KEY=VALUE` label for deployments' selectors (repeatable)"},
			&cli.StringFlag{Name: "install-hook", Usage: "node: `COMMAND` run with /bin/sh -c in each installed release's directory, with PATCH_NAME, PATCH_DIR and PATCH_MANIFEST set"},
			&cli.BoolFlag{Name: "allow-release-commands", Usage: "node: also run the install command a release carries (signed with it)"},
			&cli.DurationFlag{Name: "hook-timeout", Value: 10 * time.Minute, Usage: "node: stop an install command, and every process it started, after this long; the install fails"},
			&cli.IntFlag{Name: "keep-service-packs", Value: 1, Usage: "node: keep the files and chunks of this many retired service packs, the newest, for a rollback; those of older ones and of retired hotfixes are freed"},
			&cli.BoolFlag{Name: "keep-chunks", Usage: "node: keep the chunks of what it installed; by default a node lets go of them once its site's proxy holds the release, keeps the installed files as its one copy, and takes from them what the next version shares"},
			&cli.BoolFlag{Name: "mdns", Usage: "node: find peers of the same site on the LAN by multicast DNS"},
			&cli.StringFlag{Name: "boot-id-file", Value: agent.BootIDFile, Usage: "node: where the machine's boot identity is read: a release that needs a restart takes effect once it changes"},
			&cli.StringFlag{Name: "admin", Value: "127.0.0.1:7411", Usage: "serve the admin API on `HOST:PORT` (port 0: any free one)"},
			&cli.StringFlag{Name: "admin-token", Usage: "the admin token is in `FILE` (default: " + adminTokenFile + " in the data dir, made at the first start)"},
			&cli.StringFlag{Name: "admin-cert", Usage: "serve the admin API over TLS with the certificate in PEM `FILE` (required off loopback)"},
			&cli.StringFlag{Name: "admin-key", Usage: "the private key of --admin-cert, PEM `FILE`"},
			&cli.StringSliceFlag{Name: "admin-host", Usage: "a host `NAME` the admin API answers to, beside IP addresses and localhost (repeatable)"},
		},
		Action: runAgent,
	}
}

// roleFlags are the flags that make sense for some roles only.
var roleFlags = map[string][]agent.Role{
	"site":                   {agent.RoleProxy, agent.RoleNode},
	"upstream":               {agent.RoleProxy, agent.RoleNode},
	"sibling":                {agent.RoleProxy},
	"wan-rate":               {agent.RoleProxy},
	"cache-quota":            {agent.RoleProxy},
	"offline-after":          {agent.RoleProxy},
	"target":                 {agent.RoleNode},
	"label":                  {agent.RoleNode},
	"install-hook":           {agent.RoleNode},
	"allow-release-commands": {agent.RoleNode},
	"hook-timeout":           {agent.RoleNode},
	"mdns":                   {agent.RoleNode},
	"keep-service-packs":     {agent.RoleNode},
	"keep-chunks":            {agent.RoleNode},
	"boot-id-file":           {agent.RoleNode},
}

func runAgent(c *cli.Context) error {
	if err := exactArgs(c, 0, "no arguments"); err != nil {
		return err
	}
	if err := applyConfigFile(c); err != nil {
		return err
	}
	g := globalsOf(c)
	cfg, err := agentConfig(c, g)
	if err != nil {
		return err
	}
	log := cfg.Logger
	admin, err := listenAdmin(c, g)
	if err != nil {
		return err
	}
	defer admin.ln.Close()
	a, err := agent.New(c.Context, cfg)
	if errors.Is(err, agent.ErrTrustMismatch) {
		return usageError("%v (--reset-trust)", err)
	}
	if err != nil {
		return err
	}
	h, err := adminapi.NewServer(a.API(), adminapi.Options{Token: admin.token, TokenForReads: !admin.loopback, Hosts: c.StringSlice("admin-host"), Logger: log})
	if err != nil {
		a.Close()
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	info := AgentInfo{PeerID: a.Peer().Host.ID().String(), Role: c.String("role"), Admin: admin.url, PID: os.Getpid(), Addrs: []string{}}
	for _, addr := range a.Peer().Addrs() {
		info.Addrs = append(info.Addrs, addr.String())
	}
	if b, err := json.MarshalIndent(info, "", "  "); err == nil {
		if err := writeFileAtomic(filepath.Join(g.dataDir, agentInfoFile), b); err != nil {
			a.Close()
			return err
		}
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(admin.ln) }()
	log.Info("agent: started", "peer", "/p2p/"+info.PeerID, "role", info.Role, "site", c.String("site"), "admin", admin.url, "addrs", strings.Join(info.Addrs, " "))
	err = a.Run(c.Context)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if serr := <-served; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("admin API: %w", serr)
	}
	return err
}

// agentConfig reads the agent's flags into its typed config: the settings
// every role shares, and those of the role chosen, of which a flag for
// another role is a mistake.
func agentConfig(c *cli.Context, g globals) (agent.Config, error) {
	role, err := agent.ParseRole(c.String("role"))
	if err != nil {
		return agent.Config{}, usageError("--role: %v", err)
	}
	for flag, roles := range roleFlags {
		if c.IsSet(flag) && !slices.Contains(roles, role) {
			return agent.Config{}, usageError("--%s is for a %s, not a %s", flag, joinRoles(roles), role)
		}
	}
	if c.String("trust") == "" {
		return agent.Config{}, usageError("agent: --trust FILE is required (or trust: in the --config file)")
	}
	trust, err := os.ReadFile(c.String("trust"))
	if err != nil {
		return agent.Config{}, fmt.Errorf("--trust: %w", err)
	}
	pc, err := peerConfig(c, g)
	if err != nil {
		return agent.Config{}, err
	}
	level, err := parseLogLevel(c.String("log-level"))
	if err != nil {
		return agent.Config{}, err
	}
	pc.Logger = slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level}))
	cfg := agent.Config{PeerConfig: pc, Trust: trust, ResetTrust: c.Bool("reset-trust"), PollInterval: c.Duration("poll")}
	if cfg.PollInterval <= 0 {
		return cfg, usageError("--poll must be positive")
	}
	var up agent.Uplink
	if role != agent.RoleOrigin {
		up.Site = c.String("site")
		if up.Upstreams, err = addrInfos(c, "upstream"); err != nil {
			return cfg, err
		}
	}
	switch role {
	case agent.RoleOrigin:
		cfg.Origin = &agent.OriginConfig{}
	case agent.RoleProxy:
		p := &agent.ProxyConfig{Uplink: up, OfflineAfter: c.Int("offline-after")}
		if p.Siblings, err = addrInfos(c, "sibling"); err != nil {
			return cfg, err
		}
		if s := c.String("wan-rate"); s != "" {
			rate, err := parseRate(s)
			if err != nil {
				return cfg, usageError("--wan-rate: %v", err)
			}
			p.WANRate = int(rate)
		}
		if s := c.String("cache-quota"); s != "" {
			if p.CacheQuota, err = parseSize(s); err != nil {
				return cfg, usageError("--cache-quota: %v", err)
			}
		}
		if p.OfflineAfter < 1 {
			return cfg, usageError("--offline-after must be at least 1")
		}
		cfg.Proxy = p
	case agent.RoleNode:
		n := &agent.NodeConfig{
			Uplink: up, Target: c.String("target"), InstallHook: c.String("install-hook"),
			AllowReleaseCommands: c.Bool("allow-release-commands"), HookTimeout: c.Duration("hook-timeout"), MDNS: c.Bool("mdns"),
			KeepChunks: c.Bool("keep-chunks"),
		}
		if f := c.String("boot-id-file"); f != agent.BootIDFile {
			n.BootID = func() (string, error) { return agent.ReadBootID(f) }
		}
		if n.HookTimeout <= 0 {
			return cfg, usageError("--hook-timeout must be positive")
		}
		switch keep := c.Int("keep-service-packs"); {
		case keep < 0:
			return cfg, usageError("--keep-service-packs must not be negative")
		case keep == 0:
			n.KeepServicePacks = -1 // none
		default:
			n.KeepServicePacks = keep
		}
		for _, l := range c.StringSlice("label") {
			k, v, err := lifecycle.ParseLabel(l)
			if err != nil {
				return cfg, usageError("--label: %v", err)
			}
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			n.Labels[k] = v
		}
		cfg.Node = n
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageError("%v", err)
	}
	return cfg, nil
}

func joinRoles(roles []agent.Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// addrInfos reads the multiaddrs of a repeatable flag, each ending in
// /p2p/<peer-id>.
func addrInfos(c *cli.Context, flag string) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for _, s := range c.StringSlice(flag) {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, usageError("--%s %q: %v", flag, s, err)
		}
		info, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, usageError("--%s %q must end in /p2p/<peer-id>: %v", flag, s, err)
		}
		out = append(out, *info)
	}
	return out, nil
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usageError("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// adminListener is where the admin API listens, and how it is guarded.
type adminListener struct {
	ln       net.Listener
	url      string
	token    string
	loopback bool
}

// listenAdmin opens the admin API's listener: over TLS if a certificate is
// given, which it must be off loopback, so that the token never crosses a
// network in clear.
func listenAdmin(c *cli.Context, g globals) (*adminListener, error) {
	token, err := adminToken(c, g)
	if err != nil {
		return nil, err
	}
	certFile, keyFile := c.String("admin-cert"), c.String("admin-key")
	if (certFile == "") != (keyFile == "") {
		return nil, usageError("--admin-cert and --admin-key go together")
	}
	ln, err := net.Listen("tcp", c.String("admin"))
	if err != nil {
		return nil, fmt.Errorf("--admin %s: %w", c.String("admin"), err)
	}
	al := &adminListener{ln: ln, token: token, loopback: ln.Addr().(*net.TCPAddr).IP.IsLoopback()}
	scheme := "http"
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("--admin-cert: %w", err)
		}
		al.ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	} else if !al.loopback {
		ln.Close()
		return nil, usageError("--admin %s is not a loopback address: give --admin-cert and --admin-key so that the token never crosses the network in clear", c.String("admin"))
	}
	al.url = scheme + "://" + ln.Addr().String()
	return al, nil
}

// adminToken reads the admin token: from --admin-token, or from the data
// dir, where it is made at the first start. Whoever has it controls the
// agent, so its file must be readable by the agent's user only.
func adminToken(c *cli.Context, g globals) (string, error) {
	f := c.String("admin-token")
	if f == "" {
		f = filepath.Join(g.dataDir, adminTokenFile)
		if err := os.MkdirAll(g.dataDir, 0o755); err != nil {
			return "", err
		}
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return "", err
			}
			if err := writeNewFile(f, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
				return "", fmt.Errorf("make the admin token: %w", err)
			}
		}
	}
	fi, err := os.Stat(f)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", usageError("the admin token %s is readable by others (mode %o); chmod 600 it", f, fi.Mode().Perm())
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", usageError("the admin token %s holds %d characters; use at least 16 random ones", f, len(token))
	}
	return token, nil
}

// writeFileAtomic writes data to path through a temporary file and a rename.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
