package main

import (
	"fmt"
	"slices"

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
		Flags: slices.Concat(indexSigningFlags(), []cli.Flag{
			&cli.StringSliceFlag{Name: "site", Usage: "a `SITE` the proxy reports (repeatable; replaces the sites it was enrolled for)"},
			&cli.BoolFlag{Name: "remove", Usage: "remove the proxy's enrolment instead"},
		}, adminFlags("origin", "the origin's")),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "PROXY-PEER-ID (the proxy prints it with patchctl id)"); err != nil {
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
	is, err := readIndexSigning(c)
	if err != nil {
		return err
	}
	ac, err := adminClient(c, g, "origin")
	if err != nil {
		return err
	}
	want := manifest.ProxyEnrolment{Peer: p.String(), Sites: sites}
	ix, changed, err := editOriginIndex(c.Context, ac, is, func(held, next *manifest.Index) (bool, error) {
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
