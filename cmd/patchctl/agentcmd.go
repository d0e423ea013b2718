package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/patchctl/patchctl/agent"
)

// agentInfoFile is written to the data dir when an agent starts: its peer
// ID, listen addresses and admin URL, for scripts and the CLI on the same
// machine.
const agentInfoFile = "agent.json"

// AgentInfo is the content of agentInfoFile.
type AgentInfo struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	Admin  string   `json:"admin"`
	PID    int      `json:"pid"`
}

func agentCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "read these settings from a YAML `FILE` (keys are the flag names); flags given on the command line win"},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "role", Value: "node", Usage: "`ROLE`: origin, proxy or node"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "site", Usage: "the agent's `SITE` name"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "listen", Usage: "listen `MULTIADDR` (repeatable); default all interfaces, TCP and QUIC"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "upstream", Usage: "upstream `MULTIADDR` ending in /p2p/<peer-id> (repeatable): a node's site proxy, a proxy's origin or parent proxy"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "sibling", Usage: "a proxy of another site to share chunks with, `MULTIADDR` (repeatable)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "trust", Usage: "trust root `FILE`", Required: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "target", Usage: "which packs apply to this node: client or server (the C or S of a pack's name); generic packages apply to both"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "label", Usage: "`KEY=VALUE` label for deployments' selectors (repeatable)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "install-hook", Usage: "`COMMAND` run with /bin/sh -c in each installed release's directory, with PATCH_NAME, PATCH_DIR and PATCH_MANIFEST set"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "allow-release-commands", Usage: "also run the install command a release carries (signed with it)"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "hook-timeout", Value: 10 * time.Minute, Usage: "stop an install command after this long; the install fails"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin", Value: "127.0.0.1:7411", Usage: "serve the admin API on `HOST:PORT` (port 0: any free one)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin-token", Usage: "require the token in `FILE` of every admin request (required unless the API is bound to loopback)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "network-key", Usage: "private network key `FILE` (swarm.key): talk only to nodes with the same key (TCP only)"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "allow", Usage: "only talk to this `PEER-ID` (repeatable)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "wan-rate", Usage: "cap a proxy's downloads over the WAN at `RATE` (e.g. 20Mbit)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "cache-quota", Usage: "keep a proxy's chunks under `SIZE` (e.g. 50GiB); releases the site still needs are never evicted"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "poll", Value: time.Minute, Usage: "how often to ask the upstream for a newer index and report status"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "mdns", Usage: "find peers of the same site on the LAN by multicast DNS"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "max-upload-rate", Usage: "cap what this agent serves, in `BYTES_PER_S` (0: unlimited)"}),
	}
	return &cli.Command{
		Name:      "agent",
		Usage:     "run the long-lived agent of an origin, proxy or node: follow the signed index, replicate, install, report status, serve the admin API",
		ArgsUsage: " ",
		Flags:     flags,
		Before:    altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config")),
		Action:    runAgent,
	}
}

func runAgent(c *cli.Context) error {
	if err := exactArgs(c, 0, "no arguments"); err != nil {
		return err
	}
	g := globalsOf(c)
	cfg, err := nodeConfig(c, g)
	if err != nil {
		return err
	}
	if err := agentFlags(c, &cfg); err != nil {
		return err
	}
	cfg.Target = c.String("target")
	cfg.InstallHook = c.String("install-hook")
	cfg.AllowReleaseCommands = c.Bool("allow-release-commands")
	cfg.HookTimeout = c.Duration("hook-timeout")
	for _, l := range c.StringSlice("label") {
		k, v, err := agent.ParseLabel(l)
		if err != nil {
			return usageError("--label: %v", err)
		}
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		cfg.Labels[k] = v
	}
	if cfg.Role != agent.RoleNode {
		for _, f := range []string{"target", "label", "install-hook", "allow-release-commands"} {
			if c.IsSet(f) {
				return usageError("--%s is for nodes: a %s caches and serves, never installs", f, cfg.Role)
			}
		}
	}
	token, err := adminToken(c)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.String("admin"))
	if err != nil {
		return fmt.Errorf("--admin %s: %w", c.String("admin"), err)
	}
	defer ln.Close()
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() && token == "" {
		return usageError("--admin %s is not a loopback address: give --admin-token FILE so that only holders of the token can use it", c.String("admin"))
	}
	n, err := agent.StartNode(c.Context, cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	log := cfg.Logger
	srv := &http.Server{Handler: n.AdminHandler(token), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("agent: admin API stopped", "err", err)
		}
	}()
	defer srv.Close()
	adminURL := "http://" + ln.Addr().String()
	info := AgentInfo{PeerID: n.Host.ID().String(), Admin: adminURL, PID: os.Getpid(), Addrs: []string{}}
	for _, a := range n.Addrs() {
		info.Addrs = append(info.Addrs, a.String())
	}
	if b, err := json.MarshalIndent(info, "", "  "); err == nil {
		if err := writeFileAtomic(filepath.Join(g.dataDir, agentInfoFile), b); err != nil {
			return err
		}
	}
	log.Info("agent: started", "peer", "/p2p/"+info.PeerID, "role", cfg.Role, "site", cfg.Site, "admin", adminURL, "addrs", strings.Join(info.Addrs, " "))
	<-c.Context.Done()
	log.Info("agent: stopping")
	return nil
}

// adminToken reads --admin-token: a file holding the token, readable by
// the agent's user only, since whoever has it controls the agent.
func adminToken(c *cli.Context) (string, error) {
	f := c.String("admin-token")
	if f == "" {
		return "", nil
	}
	fi, err := os.Stat(f)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", usageError("--admin-token %s is readable by others (mode %o); chmod 600 it", f, fi.Mode().Perm())
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", usageError("--admin-token %s holds %d characters; use at least 16 random ones", f, len(token))
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
