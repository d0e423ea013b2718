package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// adminClient talks to an agent's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// tokenFlag is the flag of every command that talks to an admin API.
var tokenFlag = &cli.StringFlag{Name: "admin-token", Usage: "send the admin token read from `FILE` (needed when the API is not bound to localhost)"}

func newAdminClient(c *cli.Context, flag string) (*adminClient, error) {
	raw := c.String(flag)
	if raw == "" {
		return nil, usageError("--%s URL is required", flag)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageError("--%s %q: want an http:// or https:// URL", flag, raw)
	}
	ac := &adminClient{base: strings.TrimRight(raw, "/"), http: &http.Client{Timeout: 5 * time.Minute}}
	if f := c.String("admin-token"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ac.token = strings.TrimSpace(string(b))
	}
	return ac, nil
}

// do sends a request and decodes a JSON answer into out (if not nil). An
// error answer becomes an error carrying the API's message.
func (ac *adminClient) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, ac.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if ac.token != "" {
		req.Header.Set("Authorization", "Bearer "+ac.token)
	}
	resp, err := ac.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var ae agent.APIError
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &ae) == nil && ae.Error != "" {
			msg = ae.Error
		}
		err := fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
		switch resp.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", err, agent.ErrReleaseNotFound)
		case http.StatusUnprocessableEntity, http.StatusConflict:
			return fmt.Errorf("%w: %w", err, manifest.ErrInvalid)
		}
		return err
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	return json.Unmarshal(data, out)
}

// currentIndex returns the origin's index, verified against root, or nil if
// it has none yet.
func (ac *adminClient) currentIndex(ctx context.Context, root *manifest.Root) (*manifest.Index, error) {
	var env []byte
	err := ac.do(ctx, http.MethodGet, "/v1/index", nil, &env)
	if errors.Is(err, agent.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// What is signed next is built on this index, so it is verified
	// first: an origin that lies must not get releases signed in.
	ix, err := root.VerifyIndex(env, time.Now(), nil)
	if err != nil {
		return nil, fmt.Errorf("the origin's index: %w", err)
	}
	return ix, nil
}

// signingRoot is what an index fetched from the origin is checked against
// before it is extended and signed: the --trust root, or, without one, a
// root of the signing key alone.
func signingRoot(c *cli.Context, key ed25519.PrivateKey) (*manifest.Root, error) {
	if f := c.String("trust"); f != "" {
		return loadTrust(f)
	}
	return manifest.NewRoot([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, 1, 1, time.Now().Add(time.Hour))
}

// postIndex signs the next version of ix (nil: none yet) changed by edit and
// hands it to the origin.
func (ac *adminClient) postIndex(ctx context.Context, held *manifest.Index, key ed25519.PrivateKey, lifetime time.Duration, edit func(ix *manifest.Index)) (*manifest.Index, error) {
	now := time.Now()
	ix := &manifest.Index{Version: 1, Channel: "stable"}
	if held != nil {
		ix.Version, ix.Channel = held.Version+1, held.Channel
		ix.Releases, ix.Deployments = held.Releases, held.Deployments
	}
	ix.Created, ix.Expires = now, now.Add(lifetime)
	edit(ix)
	env, err := manifest.SignIndex(ix, key)
	if err != nil {
		return nil, err
	}
	if err := ac.do(ctx, http.MethodPost, "/v1/index", env, nil); err != nil {
		return nil, err
	}
	return ix, nil
}

func deployCommand() *cli.Command {
	return &cli.Command{
		Name:      "deploy",
		Usage:     "deploy a release to the nodes a selector matches: sign the origin's next index with the deployment added",
		ArgsUsage: "RELEASE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "origin", Usage: "the origin's admin API `URL`", Required: true},
			&cli.StringFlag{Name: "key", Usage: "signing key `FILE` (NAME.key)", Required: true},
			&cli.StringFlag{Name: "to", Usage: "`SELECTOR`: key=value terms joined by commas, all of which must match (site=, target=client|server, node=, or a label); empty is every node"},
			&cli.StringFlag{Name: "mode", Value: manifest.ModeAssigned, Usage: "assigned (download and install) or available (download; install on request)"},
			&cli.StringFlag{Name: "window", Usage: "install only between `HH:MM-HH:MM`, the node's local time (assigned only)"},
			&cli.StringFlag{Name: "trust", Usage: "trust root `FILE` the origin's current index is checked against (default: the signing key alone)"},
			&cli.DurationFlag{Name: "lifetime", Value: 30 * 24 * time.Hour, Usage: "how long the signed index stays valid"},
			tokenFlag,
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE (flags go before it)"); err != nil {
				return err
			}
			g := globalsOf(c)
			name := c.Args().First()
			d, err := deploymentFlags(c, name)
			if err != nil {
				return err
			}
			key, err := readPrivateKey(c.String("key"))
			if err != nil {
				return err
			}
			ac, err := newAdminClient(c, "origin")
			if err != nil {
				return err
			}
			root, err := signingRoot(c, key)
			if err != nil {
				return err
			}
			held, err := ac.currentIndex(c.Context, root)
			if err != nil {
				return err
			}
			if held == nil {
				return fmt.Errorf("the origin has no index yet; publish %s there first (publish --origin): %w", name, agent.ErrReleaseNotFound)
			}
			if _, ok := held.Lookup(name); !ok {
				return fmt.Errorf("release %s is not in the origin's index; publish it there first (publish --origin): %w", name, agent.ErrReleaseNotFound)
			}
			if slices.Contains(held.Deployments, d) {
				return printDeploy(g, d, held.Version, false)
			}
			ix, err := ac.postIndex(c.Context, held, key, c.Duration("lifetime"), func(ix *manifest.Index) {
				ix.Deployments = append(append([]manifest.Deployment{}, ix.Deployments...), d)
			})
			if err != nil {
				return err
			}
			return printDeploy(g, d, ix.Version, true)
		},
	}
}

// deploymentFlags reads --to, --mode and --window into a deployment of
// release, in the canonical form of each.
func deploymentFlags(c *cli.Context, release string) (manifest.Deployment, error) {
	sel, err := agent.ParseSelector(c.String("to"))
	if err != nil {
		return manifest.Deployment{}, usageError("--to: %v", err)
	}
	win, err := agent.ParseWindow(c.String("window"))
	if err != nil {
		return manifest.Deployment{}, usageError("--window: %v", err)
	}
	mode := c.String("mode")
	if mode != manifest.ModeAssigned && mode != manifest.ModeAvailable {
		return manifest.Deployment{}, usageError("--mode %q: want assigned or available", mode)
	}
	if !win.IsZero() && mode != manifest.ModeAssigned {
		return manifest.Deployment{}, usageError("--window applies to assigned deployments; an available one installs when asked")
	}
	return manifest.Deployment{Release: release, Selector: sel.String(), Mode: mode, Window: win.String()}, nil
}

func printDeploy(g globals, d manifest.Deployment, version uint64, added bool) error {
	if g.json {
		return g.printJSON(map[string]any{"deployment": d, "index_version": version, "added": added})
	}
	to := d.Selector
	if to == "" {
		to = "every node"
	}
	win := ""
	if d.Window != "" {
		win = " in " + d.Window
	}
	if !added {
		fmt.Fprintf(g.stdout, "%s is already deployed %s to %s%s (index version %d); nothing changed\n", d.Release, d.Mode, to, win, version)
		return nil
	}
	fmt.Fprintf(g.stdout, "deployed %s %s to %s%s: index version %d\n", d.Release, d.Mode, to, win, version)
	return nil
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "per release and site: nodes targeted, replicated X/Y, installed X/Y, and each failure with its node and reason",
		ArgsUsage: "[RELEASE]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "origin", Usage: "the origin's (or a proxy's) admin API `URL`", Required: true},
			tokenFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageError("status: at most one RELEASE (flags go before it)")
			}
			g := globalsOf(c)
			ac, err := newAdminClient(c, "origin")
			if err != nil {
				return err
			}
			path := "/v1/status"
			if name := c.Args().First(); name != "" {
				path += "?release=" + url.QueryEscape(name)
			}
			var st agent.FleetStatus
			if err := ac.do(c.Context, http.MethodGet, path, nil, &st); err != nil {
				return err
			}
			if g.json {
				if c.NArg() == 1 && len(st.Releases) == 1 {
					return g.printJSON(st.Releases[0])
				}
				return g.printJSON(st)
			}
			printFleet(g.stdout, st)
			return nil
		},
	}
}

// printFleet prints the fleet view as a table per release.
func printFleet(out io.Writer, st agent.FleetStatus) {
	if len(st.Releases) == 0 {
		fmt.Fprintln(out, "no releases in the index")
	}
	for i, r := range st.Releases {
		if i > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintln(out, r.Name)
		if len(r.Sites) == 0 {
			fmt.Fprintln(out, "  not deployed")
			continue
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SITE\tNODES\tREPLICATED\tINSTALLED\tFAILED\tOTHER")
		for _, s := range r.Sites {
			var other []string
			for state, n := range s.States {
				switch state {
				case p2p.StateInstalled, p2p.StateFailed, p2p.StateRefused:
				default:
					other = append(other, fmt.Sprintf("%d %s", n, state))
				}
			}
			sort.Strings(other)
			fmt.Fprintf(tw, "  %s\t%d\t%d/%d\t%d/%d\t%d\t%s\n", s.Site, s.Nodes, s.Replicated, s.Nodes, s.Installed, s.Nodes, len(s.Failed), strings.Join(other, ", "))
		}
		tw.Flush()
		for _, s := range r.Sites {
			for _, f := range s.Failed {
				fmt.Fprintf(out, "  %s %s %s: %s\n", s.Site, f.Node, f.State, f.Reason)
			}
			for _, b := range s.Blocked {
				fmt.Fprintf(out, "  %s %s blocked: %s\n", s.Site, b.Node, b.Reason)
			}
			for _, d := range s.Downloading {
				fmt.Fprintf(out, "  %s %s downloading: %.1f%% (%s of %s)\n", s.Site, d.Node, d.Percent, humanBytes(d.Bytes), humanBytes(d.Total))
			}
		}
	}
}

func retryCommand() *cli.Command {
	return &cli.Command{
		Name:      "retry",
		Usage:     "re-run the failed installs of a release, on every node or one",
		ArgsUsage: "RELEASE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "origin", Usage: "the origin's admin API `URL`", Required: true},
			&cli.StringFlag{Name: "node", Usage: "only this node's failed install (`PEER-ID`)"},
			tokenFlag,
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE (flags go before it)"); err != nil {
				return err
			}
			g := globalsOf(c)
			ac, err := newAdminClient(c, "origin")
			if err != nil {
				return err
			}
			body, _ := json.Marshal(map[string]string{"release": c.Args().First(), "node": c.String("node")})
			var res struct {
				Generation uint64 `json:"generation"`
			}
			if err := ac.do(c.Context, http.MethodPost, "/v1/retry", body, &res); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"release": c.Args().First(), "node": c.String("node"), "generation": res.Generation})
			}
			who := "every node where it failed"
			if n := c.String("node"); n != "" {
				who = n
			}
			fmt.Fprintf(g.stdout, "retry %d of %s ordered for %s; it reaches the nodes at their next report\n", res.Generation, c.Args().First(), who)
			return nil
		},
	}
}

func aboutCommand() *cli.Command {
	return &cli.Command{
		Name:      "about",
		Usage:     "list the releases a node has installed, and those retired",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", Usage: "the node's admin API `URL`", Required: true},
			tokenFlag,
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 0, "no arguments"); err != nil {
				return err
			}
			g := globalsOf(c)
			ac, err := newAdminClient(c, "admin")
			if err != nil {
				return err
			}
			var ab agent.About
			if err := ac.do(c.Context, http.MethodGet, "/v1/about", nil, &ab); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(ab)
			}
			tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RELEASE\tSTATE\tINSTALLED\tNOTE")
			for _, e := range ab.Installed {
				note := ""
				if e.RestartRequired {
					note = "takes effect when the agent restarts"
				}
				fmt.Fprintf(tw, "%s\tinstalled\t%s\t%s\n", e.Name, e.InstalledAt.Local().Format(time.DateTime), note)
			}
			for _, e := range ab.Retired {
				fmt.Fprintf(tw, "%s\tretired\t%s\tretired by %s on %s\n", e.Name, e.InstalledAt.Local().Format(time.DateTime), e.RetiredBy, e.RetiredAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}

func installCommand() *cli.Command {
	return &cli.Command{
		Name:      "install",
		Usage:     "on a node: install a release deployed as available, or run a failed install again",
		ArgsUsage: "RELEASE",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", Usage: "the node's admin API `URL`", Required: true},
			tokenFlag,
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, 1, "RELEASE (flags go before it)"); err != nil {
				return err
			}
			g := globalsOf(c)
			ac, err := newAdminClient(c, "admin")
			if err != nil {
				return err
			}
			name := c.Args().First()
			if err := ac.do(c.Context, http.MethodPost, "/v1/install/"+url.PathEscape(name), nil, nil); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]string{"release": name, "state": "requested"})
			}
			fmt.Fprintf(g.stdout, "install of %s requested; `patchctl about` shows it once installed\n", name)
			return nil
		},
	}
}

// handover is what handing a release to the origin did.
type handover struct {
	ChunksSent   int    `json:"chunks_sent"`
	BytesSent    int64  `json:"bytes_sent"`
	IndexVersion uint64 `json:"index_version"`
}

// handToOrigin hands a release published here to the origin: the signed
// envelope, then the stored chunk frames it lacks (sent as stored, and
// verified there against their CIDs), then the origin's next index with the
// release in it, signed with the same key. Run again, it sends only what is
// still missing.
func handToOrigin(c *cli.Context, key ed25519.PrivateKey, s *store.Disk, res *agent.PublishResult) (*handover, error) {
	ac, err := newAdminClient(c, "origin")
	if err != nil {
		return nil, err
	}
	ctx := c.Context
	h := &handover{}
	var ing agent.IngestResult
	if err := ac.do(ctx, http.MethodPost, "/v1/releases", res.Envelope, &ing); err != nil {
		return nil, err
	}
	for _, ref := range ing.Missing {
		id, err := manifest.ParseChunkID(ref)
		if err != nil {
			return nil, fmt.Errorf("the origin asked for %q: %w", ref, err)
		}
		frame, err := s.GetFrame(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("the origin asked for chunk %s, not held here: %w", id, err)
		}
		if err := ac.do(ctx, http.MethodPut, "/v1/chunks/"+id.String(), frame, nil); err != nil {
			return nil, err
		}
		h.ChunksSent++
		h.BytesSent += int64(len(frame))
	}
	if len(ing.Missing) > 0 {
		if err := ac.do(ctx, http.MethodPost, "/v1/releases", res.Envelope, &ing); err != nil {
			return nil, err
		}
		if !ing.Stored {
			return nil, fmt.Errorf("the origin still lacks %d chunks of %s", len(ing.Missing), res.Name)
		}
	}
	root, err := signingRoot(c, key)
	if err != nil {
		return nil, err
	}
	held, err := ac.currentIndex(ctx, root)
	if err != nil {
		return nil, err
	}
	entry := manifest.IndexEntry{Name: res.Name, CID: res.CID.String(), Sequence: res.Sequence}
	if held != nil {
		if e, ok := held.Lookup(res.Name); ok && e.CID == entry.CID {
			h.IndexVersion = held.Version
			return h, nil
		}
	}
	ix, err := ac.postIndex(ctx, held, key, 30*24*time.Hour, func(ix *manifest.Index) {
		ix.Releases = slices.DeleteFunc(slices.Clone(ix.Releases), func(e manifest.IndexEntry) bool { return e.Name == entry.Name })
		ix.Releases = append(ix.Releases, entry)
	})
	if err != nil {
		return nil, err
	}
	h.IndexVersion = ix.Version
	return h, nil
}
