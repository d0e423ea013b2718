package main

import (
	"fmt"
	"os"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/p2p"
)

// swarmFlags are the flags of every command that joins the swarm.
func swarmFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "listen", Usage: "listen `MULTIADDR` (repeatable); default all interfaces, TCP and QUIC, ports the system picks"},
		&cli.StringFlag{Name: "network-key", Usage: "private network key `FILE` (swarm.key): talk only to nodes with the same key (TCP only)"},
		&cli.StringSliceFlag{Name: "allow", Usage: "only talk to this `PEER-ID` (repeatable)"},
	}
}

// peerConfig reads the swarm flags, and --max-upload-rate where a command
// has it.
func peerConfig(c *cli.Context, g globals) (agent.PeerConfig, error) {
	cfg := agent.PeerConfig{DataDir: g.dataDir, ListenAddrs: c.StringSlice("listen"), MaxUploadRate: c.Int("max-upload-rate")}
	if cfg.MaxUploadRate < 0 {
		return cfg, usageError("--max-upload-rate must not be negative")
	}
	if f := c.String("network-key"); f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return cfg, err
		}
		if cfg.NetworkKey, err = p2p.ParseNetworkKey(data); err != nil {
			return cfg, usageError("%s: %v", f, err)
		}
	}
	for _, s := range c.StringSlice("allow") {
		id, err := peer.Decode(s)
		if err != nil {
			return cfg, usageError("--allow %q is not a peer ID: %v", s, err)
		}
		cfg.Allow = append(cfg.Allow, id)
	}
	return cfg, nil
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve the releases in the data dir to peers (no agent: see patchctl agent); prints each listen address with its /p2p/<peer-id>",
		ArgsUsage: " ",
		Flags: append(swarmFlags(),
			&cli.IntFlag{Name: "max-upload-rate", Usage: "cap what this node serves, in `BYTES_PER_S` (0: unlimited)"},
		),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			g := globalsOf(c)
			cfg, err := peerConfig(c, g)
			if err != nil {
				return err
			}
			n, err := agent.NewPeer(c.Context, cfg)
			if err != nil {
				return err
			}
			defer n.Close()
			n.Serve(agent.Serving{})
			releases, bad, err := n.Catalog.List()
			if err != nil {
				return err
			}
			warnUnreadable(g, bad)
			// Addresses on stdout, one a line, so a script or another
			// terminal can take them as --peer values; the rest on stderr.
			for _, a := range n.Addrs() {
				if g.json {
					if err := g.printJSON(map[string]string{"addr": a.String()}); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintln(g.stdout, a)
			}
			if f, ok := g.stdout.(*os.File); ok {
				f.Sync()
			}
			fmt.Fprintf(g.stderr, "serving %d releases as %s; stop with Ctrl-C\n", len(releases), n.Host.ID())
			<-c.Context.Done()
			return nil
		},
	}
}

func idCommand() *cli.Command {
	return &cli.Command{
		Name:      "id",
		Usage:     "print this node's peer ID (made on first use and kept in the data dir)",
		ArgsUsage: " ",
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			g := globalsOf(c)
			id, err := p2p.LoadPeerID(g.dataDir)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]string{"peer_id": id.String()})
			}
			fmt.Fprintln(g.stdout, id)
			return nil
		},
	}
}
