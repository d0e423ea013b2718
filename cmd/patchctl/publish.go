package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
)

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "chunk, compress and store files or a directory, and sign a manifest of them",
		ArgsUsage: "PATH...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Usage: "signing key `FILE` (NAME.key)", Required: true},
			&cli.StringFlag{Name: "name", Usage: "release name (HF-…, SP-… or any package name); default: the base name of the single PATH without its extension"},
			&cli.StringFlag{Name: "channel", Value: "stable", Usage: "release channel"},
			&cli.Uint64Flag{Name: "sequence", Usage: "manifest sequence; default: one more than the release of that name held here, or 1"},
			&cli.DurationFlag{Name: "lifetime", Value: 365 * 24 * time.Hour, Usage: "how long the signed manifest stays valid"},
			&cli.StringFlag{Name: "install-cmd", Usage: "signed install `COMMAND`, run with /bin/sh -c in the release's directory by nodes started with --allow-release-commands"},
			&cli.StringFlag{Name: "hook", Usage: "install command as an argument list split on spaces (prefer --install-cmd)"},
			&cli.StringFlag{Name: "origin", Usage: "then hand the release to the origin at its admin API `URL` and add it to the origin's signed index"},
			&cli.StringFlag{Name: "trust", Usage: "with --origin: trust root `FILE` the origin's current index is checked against (default: the signing key alone)"},
			tokenFlag,
			&cli.BoolFlag{Name: "restart-required", Usage: "installing needs a restart"},
			&cli.StringSliceFlag{Name: "label", Usage: "free-form `KEY=VALUE` label (repeatable)"},
			&cli.StringSliceFlag{Name: "supersedes", Usage: "release this one replaces (repeatable)"},
			&cli.StringSliceFlag{Name: "requires", Usage: "release that must be installed first (repeatable)"},
			&cli.StringFlag{Name: "out", Usage: "also write the signed envelope to `FILE`"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError("publish: want PATH... (flags go before arguments)")
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
			return runPublish(c, globalsOf(c), c.String("key"), c.Args().Slice(), c.String("out"), opts)
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

func runPublish(c *cli.Context, g globals, keyFile string, paths []string, out string, opts agent.PublishOptions) error {
	key, err := readPrivateKey(keyFile)
	if err != nil {
		return err
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
	var total int64
	for _, s := range sources {
		total += s.Size
	}
	s, cat, err := g.openStore()
	if err != nil {
		return err
	}
	bar := newProgress(g, total, "publish", true)
	opts.Ingest.Progress = func(n int64) { progressSet(bar, n) }
	start := time.Now()
	res, err := agent.Publish(c.Context, s, cat, key, sources, opts)
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
		if handed, err = handToOrigin(c, key, s, res); err != nil {
			return fmt.Errorf("published %s here, but handing it to the origin failed (run the same command again to resume): %w", res.Name, err)
		}
	}
	if g.json {
		return g.printJSON(map[string]any{
			"origin":       handed,
			"name":         res.Name,
			"cid":          res.CID.String(),
			"sequence":     res.Sequence,
			"total_bytes":  res.TotalBytes,
			"stored_bytes": res.StoredBytes,
			"new_bytes":    res.NewBytes,
			"chunks":       res.Chunks,
			"seconds":      secs,
		})
	}
	fmt.Fprintf(g.stdout, "published %s (sequence %d)\n", res.Name, res.Sequence)
	fmt.Fprintf(g.stdout, "manifest     %s\n", res.CID)
	fmt.Fprintf(g.stdout, "total bytes  %d (%s)\n", res.TotalBytes, humanBytes(res.TotalBytes))
	fmt.Fprintf(g.stdout, "stored bytes %d (%s, %d chunks)\n", res.StoredBytes, humanBytes(res.StoredBytes), res.Chunks)
	fmt.Fprintf(g.stdout, "new bytes    %d (%s)\n", res.NewBytes, humanBytes(res.NewBytes))
	if out != "" {
		fmt.Fprintf(g.stdout, "envelope     %s\n", out)
	}
	if handed != nil {
		fmt.Fprintf(g.stdout, "origin       sent %d chunks (%s); index version %d\n", handed.ChunksSent, humanBytes(handed.BytesSent), handed.IndexVersion)
	}
	return nil
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
