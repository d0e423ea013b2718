package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/manifest"
)

// Files an agent writes to its data dir for the CLI on the same machine.
const (
	// agentInfoFile: its peer ID, listen addresses and admin URL.
	agentInfoFile = "agent.json"
	// adminTokenFile: the admin token, readable by the agent's user only.
	adminTokenFile = "admin.token"
)

// AgentInfo is the content of agentInfoFile.
type AgentInfo struct {
	PeerID string   `json:"peer_id"`
	Role   string   `json:"role"`
	Addrs  []string `json:"addrs"`
	Admin  string   `json:"admin"`
	PID    int      `json:"pid"`
}

// readAgentInfo reads the agent info of the data dir, or nil if it has none.
func readAgentInfo(dataDir string) *AgentInfo {
	b, err := os.ReadFile(filepath.Join(dataDir, agentInfoFile))
	if err != nil {
		return nil
	}
	var info AgentInfo
	if json.Unmarshal(b, &info) != nil || info.Admin == "" {
		return nil
	}
	return &info
}

// adminFlags are the flags of a command that talks to an agent's admin API
// at the URL flag urlFlag.
func adminFlags(urlFlag, whose string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: urlFlag, Usage: whose + " admin API `URL` (default: the agent of --data-dir, from its " + agentInfoFile + ")"},
		&cli.StringFlag{Name: "admin-token", Usage: "send the admin token read from `FILE` (default: the agent's own " + adminTokenFile + ", for the agent of --data-dir)"},
		&cli.StringFlag{Name: "admin-ca", Usage: "trust the CA certificates in PEM `FILE` for an https admin URL"},
	}
}

// adminClient returns a client of the admin API that --urlFlag names, or of
// the agent of the data dir. The token of the data dir's agent is sent only
// to that agent, never to another URL.
func adminClient(c *cli.Context, g globals, urlFlag string) (*adminapi.Client, error) {
	local := readAgentInfo(g.dataDir)
	raw := c.String(urlFlag)
	if raw == "" {
		if local == nil {
			return nil, usageError("--%s URL is required: no agent has run on the data dir %s", urlFlag, g.dataDir)
		}
		raw = local.Admin
	}
	opts := adminapi.ClientOptions{}
	switch f := c.String("admin-token"); {
	case f != "":
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--admin-token: %w", err)
		}
		opts.Token = strings.TrimSpace(string(b))
	case local != nil && sameAgent(raw, local.Admin):
		if b, err := os.ReadFile(filepath.Join(g.dataDir, adminTokenFile)); err == nil {
			opts.Token = strings.TrimSpace(string(b))
		}
	}
	if f := c.String("admin-ca"); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--admin-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageError("--admin-ca %s holds no PEM certificate", f)
		}
		opts.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	ac, err := adminapi.NewClient(raw, opts)
	if err != nil {
		return nil, usageError("--%s: %v", urlFlag, err)
	}
	return ac, nil
}

// sameAgent reports whether two admin URLs name the same agent.
func sameAgent(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Scheme == ub.Scheme && strings.EqualFold(ua.Host, ub.Host)
}

// signingRoots are what an index fetched from the origin is checked against
// before it is extended and signed: the --trust roots, newest last (after a
// rotation the origin's index is signed under the old root until the next
// version), or, without one, a root of the signing keys alone.
func signingRoots(c *cli.Context, keys []ed25519.PrivateKey) ([]*manifest.Root, error) {
	var roots []*manifest.Root
	for _, f := range c.StringSlice("trust") {
		r, err := loadTrust(f)
		if err != nil {
			return nil, err
		}
		roots = append(roots, r)
	}
	if len(roots) > 0 {
		slices.SortFunc(roots, func(a, b *manifest.Root) int { return cmp.Compare(a.Version, b.Version) })
		return roots, nil
	}
	pubs := make([]ed25519.PublicKey, len(keys))
	for i, k := range keys {
		pubs[i] = k.Public().(ed25519.PublicKey)
	}
	r, err := manifest.NewRoot(pubs, 1, 1, time.Now().Add(time.Hour))
	return []*manifest.Root{r}, err
}

// originIndex returns the origin's index, verified against one of roots,
// or nil if it has none yet. What is signed next builds on it, so an
// origin that lies must not get releases signed in.
func originIndex(ctx context.Context, ac *adminapi.Client, roots []*manifest.Root) (*manifest.Index, error) {
	env, err := ac.Index(ctx)
	if errors.Is(err, adminapi.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// An expired index is built on like any other: that is how a key
	// holder renews it from another machine.
	var errs []error
	for _, r := range roots {
		ix, _, err := r.VerifyIndexExpired(env, time.Now(), nil)
		if err == nil {
			return ix, nil
		}
		errs = append(errs, err)
	}
	err = errors.Join(errs...)
	if errors.Is(err, manifest.ErrUnknownKey) {
		err = fmt.Errorf("%w (after a rotation, the index is signed under the old root until its next version: give that root too, --trust OLD --trust NEW)", err)
	}
	return nil, fmt.Errorf("the origin's index: %w", err)
}

// indexEdit changes the next index version; it may refuse (with an error)
// given the index held (nil if none), and it reports false if the index
// already says what it would make it say.
type indexEdit func(held *manifest.Index, next *manifest.Index) (changed bool, err error)

// indexSigning is how the next index version is signed and where it goes.
type indexSigning struct {
	roots    []*manifest.Root // the held index is checked against them, newest last
	keys     []ed25519.PrivateKey
	lifetime time.Duration
	// out, if set, is a file the signed index is written to instead of
	// handing it to the origin, for more key holders to sign (patchctl
	// sign) before patchctl index push.
	out string
}

// indexSigningFlags are the flags of a command that signs the origin's next
// index.
func indexSigningFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "key", Usage: "signing key `FILE` (NAME.key; repeatable, up to the trust root's threshold)", Required: true},
		&cli.StringSliceFlag{Name: "trust", Usage: "trust root `FILE` the origin's current index is checked against (repeatable: after a rotation, the old and the new; default: the signing keys alone)"},
		&cli.DurationFlag{Name: "lifetime", Value: 30 * 24 * time.Hour, Usage: "how long the signed index stays valid"},
		&cli.StringFlag{Name: "out", Usage: "write the signed index to `FILE` for more key holders to sign (patchctl sign), instead of handing it to the origin (then patchctl index push)"},
	}
}

// readIndexSigning reads indexSigningFlags.
func readIndexSigning(c *cli.Context) (indexSigning, error) {
	if err := positive(c, "lifetime"); err != nil {
		return indexSigning{}, err
	}
	keys, _, err := readKeys(c.StringSlice("key"), nil)
	if err != nil {
		return indexSigning{}, err
	}
	roots, err := signingRoots(c, keys)
	if err != nil {
		return indexSigning{}, err
	}
	is := indexSigning{roots: roots, keys: keys, lifetime: c.Duration("lifetime"), out: c.String("out")}
	if newest := roots[len(roots)-1]; is.out == "" && len(keys) < newest.Threshold {
		return is, errNotEnoughKeys(len(keys), newest.Threshold)
	}
	return is, nil
}

// maxIndexAttempts bounds how often an edit is signed again on a fresh
// index when others changed the origin's meanwhile.
const maxIndexAttempts = 8

// conflictBackoff is how long an edit that lost to another waits before it
// tries again: a random wait that doubles with each attempt, up to a
// second, so that editors who keep colliding spread out instead of losing
// to each other in step.
func conflictBackoff(attempt int) time.Duration {
	ceiling := min(50*time.Millisecond<<attempt, time.Second)
	return rand.N(ceiling)
}

// editOriginIndex signs the origin's next index version, changed by edit,
// and hands it to the origin, or writes it to is.out. If another edit got
// there first (adminapi.ErrConflict), it does it again on the fresh index,
// so both changes end up in it. It returns the index the origin holds (or
// the one written) afterwards, and whether edit changed anything.
func editOriginIndex(ctx context.Context, ac *adminapi.Client, is indexSigning, edit indexEdit) (*manifest.Index, bool, error) {
	for attempt := 1; ; attempt++ {
		held, err := originIndex(ctx, ac, is.roots)
		if err != nil {
			return nil, false, err
		}
		now := time.Now()
		next := &manifest.Index{Version: 1, Channel: "stable"}
		if held != nil {
			next.Version, next.Channel = held.Version+1, held.Channel
			next.Releases = append([]manifest.IndexEntry(nil), held.Releases...)
			next.Deployments = append([]manifest.Deployment(nil), held.Deployments...)
			next.Proxies = append([]manifest.ProxyEnrolment(nil), held.Proxies...)
		}
		next.Created, next.Expires = now, now.Add(is.lifetime)
		changed, err := edit(held, next)
		if err != nil || !changed {
			return held, false, err
		}
		env, err := manifest.SignIndex(next, is.keys...)
		if err != nil {
			return nil, false, err
		}
		if is.out != "" {
			return next, true, replaceFile(is.out, env)
		}
		_, err = ac.PostIndex(ctx, env)
		if errors.Is(err, adminapi.ErrConflict) && attempt < maxIndexAttempts {
			select {
			case <-time.After(conflictBackoff(attempt)):
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
			continue
		}
		if err != nil {
			return nil, false, err
		}
		return next, true, nil
	}
}
