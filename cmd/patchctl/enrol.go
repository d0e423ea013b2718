package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/manifest"
)

func enrolCommand() *cli.Command {
	return &cli.Command{
		Name: "enrol",
		Usage: "enrol a proxy in the origin's signed index: the sites whose status it reports (its own, and those of proxies below it); " +
			"status from anyone else is refused",
		ArgsUsage: "PROXY-PEER-ID",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "key", Usage: "signing key `FILE` (NAME.key; repeatable, up to the trust root's threshold)", Required: true},
			&cli.StringSliceFlag{Name: "site", Usage: "a `SITE` the proxy reports (repeatable; replaces the sites it was enrolled for)"},
			&cli.BoolFlag{Name: "remove", Usage: "remove the proxy's enrolment instead"},
			&cli.StringFlag{Name: "trust", Usage: "trust root `FILE` the origin's current index is checked against (default: the signing keys alone)"},
			&cli.DurationFlag{Name: "lifetime", Value: 30 * 24 * time.Hour, Usage: "how long the signed index stays valid"},
		}, adminFlags("origin", "the origin's")...),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "PROXY-PEER-ID (flags go before it; the proxy prints it with patchctl id)"); err != nil {
				return err
			}
			return runEnrol(c, globalsOf(c), c.Args().First())
		},
	}
}

func runEnrol(c *cli.Context, g globals, id string) error {
	p, err := peer.Decode(id)
	if err != nil {
		return usageError("enrol: %q is not a peer ID: %v", id, err)
	}
	sites := c.StringSlice("site")
	remove := c.Bool("remove")
	if remove == (len(sites) > 0) {
		return usageError("enrol: give the proxy's --site (repeatable), or --remove")
	}
	for _, s := range sites {
		if err := manifest.ValidateSite(s); err != nil {
			return usageError("enrol: --site: %v", err)
		}
	}
	slices.Sort(sites)
	sites = slices.Compact(sites)
	keys, _, err := readKeys(c.StringSlice("key"), nil)
	if err != nil {
		return err
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	root, err := signingRoot(c, keys)
	if err != nil {
		return err
	}
	want := manifest.ProxyEnrolment{Peer: p.String(), Sites: sites}
	ix, changed, err := editOriginIndex(c.Context, ac, root, keys, c.Duration("lifetime"), func(held, next *manifest.Index) (bool, error) {
		i := slices.IndexFunc(next.Proxies, func(e manifest.ProxyEnrolment) bool { return e.Peer == want.Peer })
		switch {
		case remove && i < 0:
			return false, nil
		case remove:
			next.Proxies = slices.Delete(next.Proxies, i, i+1)
		case i >= 0 && slices.Equal(next.Proxies[i].Sites, sites):
			return false, nil
		case i >= 0:
			next.Proxies[i] = want
		default:
			next.Proxies = append(next.Proxies, want)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	var version uint64
	if ix != nil {
		version = ix.Version
	}
	if g.json {
		return g.printJSON(map[string]any{"proxy": want.Peer, "sites": sites, "removed": remove, "changed": changed, "index_version": version})
	}
	switch {
	case !changed:
		fmt.Fprintf(g.stdout, "nothing changed (index version %d)\n", version)
	case remove:
		fmt.Fprintf(g.stdout, "proxy %s no longer enrolled: index version %d\n", want.Peer, version)
	default:
		fmt.Fprintf(g.stdout, "proxy %s enrolled for %v: index version %d\n", want.Peer, sites, version)
	}
	return nil
}
