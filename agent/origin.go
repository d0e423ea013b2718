package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
)

// origin is the root of the tree: it holds every published release and the
// signed index, which it takes from the admin API and from its data dir's
// index file, and keeps the fleet view the proxies report, with the retries
// an operator orders.
type origin struct {
	*core
	sites *siteBook

	indexService  *p2p.IndexService
	statusService *fleet.StatusService
	rootService   *p2p.RootService

	mu      sync.Mutex
	retries []fleet.RetryOrder // by release, the last maxRetriesKept of each
	refused []byte             // the index file's envelope last refused, said once
}

// maxRetriesKept bounds the retry orders the origin keeps per release.
const maxRetriesKept = 16

func newOrigin(c *core) (*origin, error) {
	o := &origin{core: c}
	sites, err := newSiteBook(c, "", o.retryOrders)
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	o.sites = sites
	err = c.db.each(bucketRetries, func(_ string, v []byte) error {
		var orders []fleet.RetryOrder
		if err := json.Unmarshal(v, &orders); err != nil {
			return err
		}
		o.retries = append(o.retries, orders...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return o, nil
}

func (o *origin) start(context.Context) error {
	o.peer.Serve(Serving{})
	// The origin is told of new indexes by its operators, never by peers.
	o.indexService = p2p.NewIndexService(o.peer.Host, o.core, nil, p2p.IndexConfig{Logger: o.log})
	o.statusService = fleet.NewStatusService(o.peer.Host, o.sites, o.log)
	o.rootService = p2p.NewRootService(o.peer.Host, o.trust, o.log)
	return nil
}

func (o *origin) stop() {
	o.indexService.Close()
	o.statusService.Close()
	o.rootService.Close()
}

// poll adopts the index file of the data dir if `patchctl index add` wrote a
// newer one there.
func (o *origin) poll(context.Context) bool {
	env, err := o.index.read()
	if err != nil || env == nil {
		return true
	}
	held, _ := o.indexEnvelope()
	o.mu.Lock()
	skip := string(env) == string(held) || string(env) == string(o.refused)
	o.mu.Unlock()
	if skip {
		return true
	}
	if err := o.adoptIndexFile(); err != nil {
		o.mu.Lock()
		o.refused = env
		o.mu.Unlock()
		o.log.Warn("agent: the index file is refused", "err", err)
	}
	return true
}

func (o *origin) reportUp(context.Context) {}

// mendFrom: the proxies below, which hold copies of what they fetched.
func (o *origin) mendFrom() []peer.ID {
	o.core.mu.Lock()
	defer o.core.mu.Unlock()
	return o.recentDownstream()
}

func (o *origin) Health(context.Context) (adminapi.Health, error) { return o.health(), nil }

func (o *origin) Index(context.Context) ([]byte, error) { return o.indexEnvelope() }

// PostIndex adopts env, which must build on the index held: one of an
// older or equal version (signed by someone who had not seen the newer one)
// is a conflict, which the CLI answers by signing again on the fresh index.
func (o *origin) PostIndex(_ context.Context, env []byte) (uint64, error) {
	ix, _, err := o.adopt(env)
	if errors.Is(err, manifest.ErrRollback) {
		held := o.current()
		return 0, fmt.Errorf("the origin holds index version %d, and this one does not build on it (%w): %w", held.Version, err, adminapi.ErrConflict)
	}
	if err != nil {
		return 0, err
	}
	return ix.Version, nil
}

// PostRoot takes a new trust root handed to the origin: it must follow the
// origin's root (signed by its threshold and its own), and travels down the
// tree from here, each agent taking it only along the chain.
func (o *origin) PostRoot(_ context.Context, env []byte) (uint64, error) {
	version, moved, err := o.trust.take([][]byte{env}, o.clock.Now())
	if err != nil {
		return 0, err
	}
	if moved {
		o.log.Info("agent: trust root rotated", "version", version)
		o.rootRotated()
	}
	return version, nil
}

// IngestRelease takes a signed release handed to the origin: it verifies
// the envelope against the trust root and an earlier release of the name,
// and lists the chunks still missing; once none is, the release is pinned
// and enters the catalog, as publishing there would have left it.
func (o *origin) IngestRelease(ctx context.Context, env []byte) (adminapi.IngestResult, error) {
	m, id, err := o.trust.current().VerifyManifest(env, o.clock.Now())
	if err != nil {
		return adminapi.IngestResult{}, err
	}
	res := adminapi.IngestResult{Name: m.Name, CID: id.String(), Missing: []string{}}
	// A release held already is checked for missing chunks too: one
	// quarantined since is sent again by the publisher that sends it again.
	if held, err := o.peer.Catalog.Get(m.Name); err == nil {
		if err := manifest.CheckSequence(held.Manifest, m); err != nil && !held.CID.Equals(id) {
			return adminapi.IngestResult{}, err
		}
	} else if !errors.Is(err, ErrReleaseNotFound) {
		return adminapi.IngestResult{}, err
	}
	ids := m.ChunkIDs()
	seen := make(map[cid.Cid]bool, len(ids))
	for _, c := range ids {
		if seen[c] {
			continue
		}
		seen[c] = true
		ok, err := o.peer.Store.Has(ctx, c)
		if err != nil {
			return adminapi.IngestResult{}, err
		}
		if !ok {
			res.Missing = append(res.Missing, c.String())
		}
	}
	if len(res.Missing) > 0 {
		return res, nil
	}
	if err := o.peer.Store.Sync(ctx); err != nil {
		return adminapi.IngestResult{}, err
	}
	if err := o.peer.Store.Pin(ctx, m.Name, ids); err != nil {
		return adminapi.IngestResult{}, err
	}
	if err := o.peer.Catalog.Save(m.Name, env); err != nil {
		return adminapi.IngestResult{}, err
	}
	o.log.Info("agent: release received", "release", m.Name, "cid", id)
	res.Stored = true
	return res, nil
}

// PutChunk stores one chunk frame handed to the origin, verified against
// its CID.
func (o *origin) PutChunk(ctx context.Context, id cid.Cid, frame []byte) error {
	return o.peer.Store.PutFrame(ctx, id, frame)
}

// Retry orders the failed installs of a release of the index to run again:
// on every node, or on one. The order travels down with the answers to the
// proxies' reports.
func (o *origin) Retry(_ context.Context, req adminapi.RetryRequest) (adminapi.RetryResult, error) {
	if _, err := manifest.ParsePackName(req.Release); err != nil {
		return adminapi.RetryResult{}, fmt.Errorf("%w: %w", adminapi.ErrUsage, err)
	}
	if req.Node != "" {
		if _, err := peer.Decode(req.Node); err != nil {
			return adminapi.RetryResult{}, fmt.Errorf("node %q is not a peer ID: %w", req.Node, adminapi.ErrUsage)
		}
	}
	ix := o.current()
	var entry manifest.IndexEntry
	ok := false
	if ix != nil {
		entry, ok = ix.Lookup(req.Release)
	}
	if !ok {
		return adminapi.RetryResult{}, fmt.Errorf("release %s is not in the index: %w", req.Release, ErrReleaseNotFound)
	}
	o.mu.Lock()
	var gen uint64
	var mine []fleet.RetryOrder
	for _, r := range o.retries {
		if r.Release == req.Release {
			gen = max(gen, r.Generation)
			mine = append(mine, r)
		}
	}
	order := fleet.RetryOrder{Release: req.Release, Node: req.Node, Generation: gen + 1}
	mine = append(mine, order)
	mine = mine[max(0, len(mine)-maxRetriesKept):]
	o.retries = slices.DeleteFunc(o.retries, func(r fleet.RetryOrder) bool { return r.Release == req.Release })
	o.retries = append(o.retries, mine...)
	if over := len(o.retries) - fleet.MaxRetryOrders; over > 0 {
		o.retries = o.retries[over:]
	}
	o.mu.Unlock()
	if err := o.db.put(bucketRetries, req.Release, mine); err != nil {
		return adminapi.RetryResult{}, err
	}
	failed := 0
	for _, s := range o.sites.below() {
		for _, f := range countSite(ix, entry, s).Failed {
			if f.State == lifecycle.Failed && (req.Node == "" || req.Node == f.Node) {
				failed++
			}
		}
	}
	o.log.Info("agent: retry ordered", "release", req.Release, "node", req.Node, "generation", order.Generation, "failed", failed)
	o.nudgeDownstream()
	return adminapi.RetryResult{Release: req.Release, Node: req.Node, Generation: order.Generation, Failed: failed}, nil
}

// retryOrders returns the retries ordered here, for the answers to the
// proxies.
func (o *origin) retryOrders() []fleet.RetryOrder {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.retries)
}

// FleetStatus is the fleet view of release (every release if empty).
func (o *origin) FleetStatus(_ context.Context, release string) (adminapi.FleetStatus, error) {
	st, err := fleetStatus(o.current(), o.sites.below(), release, o.clock.Now())
	st.Unenrolled = o.sites.unenrolled()
	return st, err
}
