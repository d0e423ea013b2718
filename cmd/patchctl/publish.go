package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
)

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "chunk, compress and store files or a directory, and sign a manifest of them",
		ArgsUsage: "PATH...",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "key", Usage: "signing key `FILE` (NAME.key; repeatable, up to the trust root's threshold; others can add theirs with patchctl sign)", Required: true},
			&cli.StringFlag{Name: "name", Usage: "release name (HF-…, SP-… or any package name); default: the base name of the single PATH without its extension"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "release channel"},
			&cli.Uint64Flag{Name: "sequence", Usage: "manifest sequence", DefaultText: "one more than the release of that name held here, or 1"},
			&cli.DurationFlag{Name: "lifetime", Value: 365 * 24 * time.Hour, Usage: "how long the signed manifest stays valid"},
			&cli.StringFlag{Name: "install-cmd", Usage: "signed install `COMMAND`, run with /bin/sh -c in the release's directory by nodes started with --allow-release-commands"},
			&cli.StringFlag{Name: "hook", Usage: "install command as an argument list split on spaces (prefer --install-cmd)"},
			&cli.StringFlag{Name: "uninstall-cmd", Usage: "signed uninstall `COMMAND`, run with /bin/sh -c in the release's directory where it is installed when it is withdrawn with --uninstall"},
			&cli.StringFlag{Name: "origin", Usage: "then hand the release to the origin at its admin API `URL` and add it to the origin's signed index"},
			&cli.StringSliceFlag{Name: "trust", Usage: "with --origin: trust root `FILE` the origin's current index is checked against (repeatable: after a rotation, the old and the new; default: the signing keys alone)"},
			&cli.StringFlag{Name: "admin-token", Usage: "with --origin: send the admin token read from `FILE`"},
			&cli.StringFlag{Name: "admin-ca", Usage: "with --origin: trust the CA certificates in PEM `FILE` for an https URL"},
			&cli.StringFlag{Name: "index-out", Usage: "with --origin: write the origin's next index to `FILE` for more key holders to sign (patchctl sign), instead of handing it over (then patchctl index push)"},
			&cli.BoolFlag{Name: "restart-required", Usage: "installing needs a restart"},
			&cli.StringSliceFlag{Name: "label", Usage: "free-form `KEY=VALUE` label (repeatable)"},
			&cli.StringSliceFlag{Name: "supersedes", Usage: "release this one replaces (repeatable)"},
			&cli.StringSliceFlag{Name: "requires", Usage: "release that must be installed first (repeatable)"},
			&cli.StringFlag{Name: "out", Usage: "also write the signed envelope to `FILE`"},
			&cli.StringFlag{Name: "chunking", Value: "archive", Usage: "`archive`: cut ZIP and tar members apart, so unchanged members cost nothing to ship again; cdc: plain content-defined chunking (manifests that agents before archive chunking read)"},
			&cli.BoolFlag{Name: "explain", Usage: "list the archive members whose data was new"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError("publish: want PATH...")
			}
			if err := positive(c, "lifetime"); err != nil {
				return err
			}
			opts := agent.PublishOptions{
				Name:       c.String("name"),
				Channel:    c.String("channel"),
				Sequence:   c.Uint64("sequence"),
				Lifetime:   c.Duration("lifetime"),
				Supersedes: c.StringSlice("supersedes"),
				Requires:   c.StringSlice("requires"),
				Install:    manifest.Install{Hook: strings.Fields(c.String("hook")), RestartRequired: c.Bool("restart-required")},
			}
			if cmd := c.String("install-cmd"); cmd != "" {
				if c.IsSet("hook") {
					return usageError("publish: --install-cmd and --hook are two ways to say the same; give one")
				}
				opts.Install.Hook = []string{"/bin/sh", "-c", cmd}
			}
			if cmd := c.String("uninstall-cmd"); cmd != "" {
				opts.Install.Uninstall = []string{"/bin/sh", "-c", cmd}
			}
			switch c.String("chunking") {
			case "archive":
				opts.Ingest.Chunking = manifest.DefaultArchiveChunkParams
			case "cdc":
				opts.Ingest.Chunking = manifest.DefaultChunkParams
			default:
				return usageError("publish: --chunking is archive or cdc, not %q", c.String("chunking"))
			}
			opts.Ingest.Explain = c.Bool("explain")
			for _, l := range c.StringSlice("label") {
				k, v, ok := strings.Cut(l, "=")
				if !ok {
					return usageError("publish: label %q is not KEY=VALUE", l)
				}
				if opts.Labels == nil {
					opts.Labels = map[string]string{}
				}
				opts.Labels[k] = v
			}
			return runPublish(c, globalsOf(c), c.StringSlice("key"), c.Args().Slice(), c.String("out"), opts)
		},
	}
}

// defaultReleaseName derives a name from a single path: HF-S041000005-012.zip
// publishes as HF-S041000005-012.
func defaultReleaseName(paths []string) (string, error) {
	if len(paths) != 1 {
		return "", usageError("publish: --name is required with more than one PATH")
	}
	base := filepath.Base(filepath.Clean(paths[0]))
	if fi, err := os.Stat(paths[0]); err == nil && !fi.IsDir() {
		base = strings.TrimSuffix(base, filepath.Ext(base))
	}
	return base, nil
}

func runPublish(c *cli.Context, g globals, keyFiles []string, paths []string, out string, opts agent.PublishOptions) error {
	keys, _, err := readKeys(keyFiles, nil)
	if err != nil {
		return err
	}
	if c.String("origin") != "" && len(c.StringSlice("trust")) > 0 {
		roots, err := signingRoots(c, keys)
		if err != nil {
			return err
		}
		if root := roots[len(roots)-1]; len(keys) < root.Threshold {
			return usageError("the trust root requires %d signatures and %d keys were given: publish without --origin (--out FILE writes the envelope), have more key holders sign it (patchctl sign --key KEY FILE), then patchctl push FILE",
				root.Threshold, len(keys))
		}
	}
	if opts.Name == "" {
		if opts.Name, err = defaultReleaseName(paths); err != nil {
			return err
		}
	}
	sources, err := agent.CollectSources(paths)
	if err != nil {
		return err
	}
	for _, s := range sources {
		if s.Cleared != 0 {
			fmt.Fprintf(g.stderr, "patchctl: %s is writable by everyone; published as mode %o\n", s.Local, s.Mode)
		}
	}
	var total int64
	for _, s := range sources {
		total += s.Size
	}
	s, cat, err := g.openStore()
	if err != nil {
		return err
	}
	defer s.Close()
	bar := newProgress(g, total, "publish", true)
	opts.Ingest.Progress = func(n int64) { progressSet(bar, n) }
	start := time.Now()
	res, err := agent.Publish(c.Context, s, cat, keys, sources, opts)
	if err != nil {
		return err
	}
	progressDone(bar)
	if out != "" {
		if err := os.WriteFile(out, res.Envelope, 0o644); err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	var handed *handover
	if c.String("origin") != "" {
		is := indexSigning{keys: keys, lifetime: 30 * 24 * time.Hour, out: c.String("index-out")}
		if is.roots, err = signingRoots(c, keys); err != nil {
			return err
		}
		r, err := cat.Get(res.Name)
		if err != nil {
			return err
		}
		if handed, err = handToOrigin(c, g, is, s, r); err != nil {
			hint := ""
			if adminapi.Classify(err) != adminapi.BadData {
				hint = " (run the same command again to resume)"
			}
			return fmt.Errorf("published %s here, but handing it to the origin failed%s: %w", res.Name, hint, err)
		}
	}
	changed := changedMembers(res.MemberStats)
	if g.json {
		v := map[string]any{
			"origin":           handed,
			"name":             res.Name,
			"cid":              res.CID.String(),
			"sequence":         res.Sequence,
			"total_bytes":      res.TotalBytes,
			"stored_bytes":     res.StoredBytes,
			"new_bytes":        res.NewBytes,
			"new_file_bytes":   res.NewFileBytes,
			"reused_bytes":     res.ReusedBytes,
			"chunks":           res.Chunks,
			"chunking":         chunkingName(opts.Ingest.Chunking),
			"archives":         res.Archives,
			"members":          res.Members,
			"members_changed":  res.MembersChanged,
			"header_bytes":     res.HeaderBytes,
			"new_header_bytes": res.NewHeaderBytes,
			"seconds":          secs,
		}
		if opts.Ingest.Explain {
			list := make([]map[string]any, 0, len(changed))
			for _, m := range changed {
				list = append(list, map[string]any{
					"file": m.File, "member": m.Name,
					"data_bytes": m.DataBytes, "new_data_bytes": m.NewData,
					"header_bytes": m.HeaderBytes, "new_header_bytes": m.NewHead,
				})
			}
			v["changed_members"] = list
		}
		return g.printJSON(v)
	}
	fmt.Fprintf(g.stdout, "published %s (sequence %d)\n", res.Name, res.Sequence)
	fmt.Fprintf(g.stdout, "manifest     %s\n", res.CID)
	fmt.Fprintf(g.stdout, "total bytes  %d (%s)\n", res.TotalBytes, humanBytes(res.TotalBytes))
	fmt.Fprintf(g.stdout, "stored bytes %d (%s, %d chunks)\n", res.StoredBytes, humanBytes(res.StoredBytes), res.Chunks)
	fmt.Fprintf(g.stdout, "new bytes    %d (%s)\n", res.NewBytes, humanBytes(res.NewBytes))
	fmt.Fprintf(g.stdout, "reused       %s of %s already stored (%.1f%%), %s new\n",
		humanBytes(res.ReusedBytes), humanBytes(res.TotalBytes), percent(res.ReusedBytes, res.TotalBytes), humanBytes(res.NewFileBytes))
	if res.Archives > 0 {
		fmt.Fprintf(g.stdout, "archives     %d: %d members, %d with new data; headers %s, %s new\n",
			res.Archives, res.Members, res.MembersChanged, humanBytes(res.HeaderBytes), humanBytes(res.NewHeaderBytes))
	}
	if out != "" {
		fmt.Fprintf(g.stdout, "envelope     %s\n", out)
	}
	if opts.Ingest.Explain {
		explainMembers(g.stdout, changed, res.Members)
	}
	if handed != nil {
		fmt.Fprintf(g.stdout, "origin       sent %d chunks (%s); ", handed.ChunksSent, humanBytes(handed.BytesSent))
		printIndexOutcome(g, handed)
	}
	return nil
}

// chunkingName is the --chunking value of params.
func chunkingName(p manifest.ChunkParams) string {
	if p.Method == manifest.ChunkingArchive {
		return "archive"
	}
	return "cdc"
}

func percent(part, whole int64) float64 {
	if whole == 0 {
		return 0
	}
	return 100 * float64(part) / float64(whole)
}

// changedMembers returns the members whose data was at least in part new,
// most new bytes first.
func changedMembers(all []agent.MemberStat) []agent.MemberStat {
	var out []agent.MemberStat
	for _, m := range all {
		if m.NewData > 0 {
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].NewData > out[j].NewData })
	return out
}

// explainMembers prints the members whose data was new. A member whose
// header alone is new (a new time stamp or folder name) costs only its
// header and is not listed.
func explainMembers(w io.Writer, changed []agent.MemberStat, members int) {
	if members == 0 {
		fmt.Fprintln(w, "no archive members: the files were cut by content-defined chunking alone")
		return
	}
	fmt.Fprintf(w, "members with new data: %d of %d, most new bytes first\n", len(changed), members)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  new\tof\tfile\tmember")
	for _, m := range changed {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", humanBytes(m.NewData), humanBytes(m.DataBytes), m.File, m.Name)
	}
	tw.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
