package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// node is a client, server or appliance: it takes each release deployed to
// it through package lifecycle's states (runRelease): it downloads from its
// site's proxy and the site peers the tracker names, applies the pack rules,
// installs in the deployment's window or when asked, and reports to its
// proxy. Its state per release lives in releases, and what must outlast a
// restart in the state database.
type node struct {
	*core
	up        *follower
	conf      NodeConfig
	facts     lifecycle.NodeFacts
	work      *workers
	installer *installer
	installMu sync.Mutex // one install at a time
	tracker   *fleet.Client

	indexService *p2p.IndexService
	nudgeService *fleet.NudgeService
	mdns         io.Closer

	// dropWake asks dropLoop to let go of installed releases' chunks now.
	dropWake chan struct{}

	mu       sync.Mutex
	releases map[string]*nodeRelease
	lanPeers map[peer.ID]bool // site peers found by mDNS
}

// nodeRelease is a node's state of one release.
type nodeRelease struct {
	status  fleet.DeploymentStatus // as reported
	lasting releaseProgress        // as kept in the state database
	// dropped: the release is installed (or retired) and its chunks are
	// no longer pinned; the node holds it as its installed files only.
	dropped bool
}

// A node fetching a release asks its tracker for site peers every
// trackerPeriod, and half as often after each answer that names none it has
// not been given, down to every maxTrackerPeriod. Each ask also reports the
// node's progress to its proxy.
const (
	trackerPeriod    = 2 * time.Second
	maxTrackerPeriod = 16 * time.Second
)

func newNode(c *core, conf NodeConfig) (*node, error) {
	n := &node{
		core: c, up: newFollower(c, conf.Upstreams), conf: conf,
		facts:    lifecycle.NodeFacts{Site: conf.Site, Target: conf.Target, Node: c.peer.Host.ID().String(), Labels: conf.Labels},
		work:     newWorkers(c),
		tracker:  fleet.NewClient(c.peer.client),
		releases: map[string]*nodeRelease{},
		lanPeers: map[peer.ID]bool{},
		dropWake: make(chan struct{}, 1),
	}
	n.installer = &installer{dir: c.cfg.DataDir, site: conf.Site, conf: conf, store: c.peer.Store, db: c.db, log: c.log, clock: c.clock}
	if err := n.load(); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return n, nil
}

// load reads the node's lasting state: install records, retired ones, and
// failed installs with their reasons. A release installed with a restart
// required is in effect once the machine has booted again since.
func (n *node) load() error {
	if err := n.installer.importMarkers(); err != nil {
		return err
	}
	// Files staged by a download of an earlier run are only a head start,
	// and none is in use yet.
	if err := store.RemoveAssemblies(filepath.Join(n.cfg.DataDir, installedDir), ""); err != nil {
		n.log.Warn("agent: remove files staged by an earlier run", "err", err)
	}
	inst, err := n.db.records(bucketInstalled)
	if err != nil {
		return err
	}
	pins, err := n.peer.Store.Pins(context.Background())
	if err != nil {
		return err
	}
	boot, bootErr := n.conf.BootID()
	for _, rec := range inst {
		state := lifecycle.Installed
		if rec.RestartRequired {
			switch {
			case bootErr != nil:
				n.log.Warn("agent: the machine's boot is not known; the release stays restart-required", "release", rec.Name, "err", bootErr)
				state = lifecycle.RestartRequired
			case rec.BootID == "":
				// Recorded by an agent that did not note the boot:
				// in effect after the next one.
				rec.BootID = boot
				if err := n.db.put(bucketInstalled, rec.Name, rec); err != nil {
					return err
				}
				state = lifecycle.RestartRequired
			case rec.BootID == boot:
				state = lifecycle.RestartRequired
			default:
				rec.RestartRequired = false
				if err := n.db.put(bucketInstalled, rec.Name, rec); err != nil {
					return err
				}
				n.log.Info("agent: the machine restarted; release in effect", "release", rec.Name)
			}
		}
		_, pinned := pins[rec.Name]
		n.releases[rec.Name] = &nodeRelease{status: fleet.DeploymentStatus{Release: rec.Name, CID: rec.CID, State: state, Have: true}, dropped: !pinned}
	}
	ret, err := n.db.records(bucketRetired)
	if err != nil {
		return err
	}
	for _, rec := range ret {
		// Its chunks stay stored until they are collected.
		st := fleet.DeploymentStatus{Release: rec.Name, CID: rec.CID, State: lifecycle.Retired, Reason: "retired by " + rec.RetiredBy, Have: true}
		if !rec.UninstalledAt.IsZero() {
			st.State, st.Reason = lifecycle.Uninstalled, "withdrawn; its uninstall command ran at "+rec.UninstalledAt.Format(time.RFC3339)
		}
		_, pinned := pins[rec.Name]
		n.releases[rec.Name] = &nodeRelease{status: st, dropped: !pinned}
	}
	return n.db.each(bucketReleases, func(name string, v []byte) error {
		var prog releaseProgress
		if err := json.Unmarshal(v, &prog); err != nil {
			return fmt.Errorf("release %s: %w", name, err)
		}
		r := n.release(name)
		r.lasting = prog
		if prog.State == lifecycle.Failed && r.status.State == lifecycle.Pending {
			r.status.State, r.status.Reason, r.status.Have, r.status.Retry = lifecycle.Failed, prog.Reason, true, prog.Retry
		}
		return nil
	})
}

func (n *node) start(context.Context) error {
	n.peer.Serve(Serving{})
	n.tasks.Go(n.collectEvery)
	n.tasks.Go(n.dropLoop)
	n.indexService = p2p.NewIndexService(n.peer.Host, n.core, n.up, p2p.IndexConfig{Logger: n.log})
	n.nudgeService = fleet.NewNudgeService(n.peer.Host, n.up.Nudged, n.log)
	if n.conf.MDNS {
		// The service name carries the site, so only peers of the same
		// site answer.
		svc := mdns.NewMdnsService(n.peer.Host, "patchctl-"+n.conf.Site, n)
		if err := svc.Start(); err != nil {
			n.log.Warn("agent: mDNS not started", "err", err)
		} else {
			n.mdns = svc
		}
	}
	return nil
}

func (n *node) stop() {
	if n.mdns != nil {
		n.mdns.Close()
	}
	n.indexService.Close()
	n.nudgeService.Close()
}

func (n *node) poll(ctx context.Context) bool {
	answered, _ := n.up.pull(ctx)
	n.reconcile(ctx)
	return answered
}

// HandlePeerFound takes a site peer found by mDNS.
func (n *node) HandlePeerFound(info peer.AddrInfo) {
	if info.ID == n.peer.Host.ID() {
		return
	}
	n.peer.Host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.TempAddrTTL)
	n.mu.Lock()
	n.lanPeers[info.ID] = true
	n.mu.Unlock()
}

// mendFrom: the upstreams, and the site peers.
func (n *node) mendFrom() []peer.ID { return append(slices.Clone(n.up.ids), n.sitePeers()...) }

// sitePeers returns the site peers found by mDNS.
func (n *node) sitePeers() []peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	ids := make([]peer.ID, 0, len(n.lanPeers))
	for id := range n.lanPeers {
		ids = append(ids, id)
	}
	return ids
}

// release returns the state of a release, creating it pending; n.mu is held
// (or the node is not running yet).
func (n *node) release(name string) *nodeRelease {
	r := n.releases[name]
	if r == nil {
		r = &nodeRelease{status: fleet.DeploymentStatus{Release: name, State: lifecycle.Pending}}
		n.releases[name] = r
	}
	return r
}

// setLife moves a release to state with a reason, keeps what must outlast a
// restart, and has the change reported.
func (n *node) setLife(name, state, reason string) {
	n.mu.Lock()
	r := n.release(name)
	changed := r.status.State != state || r.status.Reason != reason
	r.status.State, r.status.Reason = state, fleet.CutReason(reason)
	switch state {
	case lifecycle.Installed, lifecycle.RestartRequired, lifecycle.Downloaded, lifecycle.Blocked, lifecycle.Installing, lifecycle.Failed:
		r.status.Have = true
	}
	prog := r.lasting
	n.mu.Unlock()
	if !changed {
		return
	}
	if state == lifecycle.Failed || prog.State == lifecycle.Failed {
		prog.State, prog.Reason = "", ""
		if state == lifecycle.Failed {
			prog.State, prog.Reason = state, reason
		}
		n.keep(name, prog)
	}
	n.log.Info("agent: release "+state, "release", name, "reason", reason)
	n.changed()
}

// keep records what of a release must outlast a restart.
func (n *node) keep(name string, prog releaseProgress) {
	n.mu.Lock()
	n.release(name).lasting = prog
	n.mu.Unlock()
	if err := n.db.put(bucketReleases, name, prog); err != nil {
		n.log.Error("agent: keep release state", "release", name, "err", err)
	}
}

// installedNames lists the releases installed, not retired.
func (n *node) installedNames() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var names []string
	for name, r := range n.releases {
		if lifecycle.InEffect(r.status.State) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// reconcile starts work on every release deployed to this node that is not
// settled.
func (n *node) reconcile(context.Context) {
	ix := n.usable()
	if ix == nil {
		return
	}
	for _, e := range ix.Releases {
		if e.Withdrawn {
			n.withdraw(e)
			continue
		}
		p := lifecycle.PlanFor(ix, e, n.facts)
		if !p.Targeted {
			continue
		}
		n.mu.Lock()
		r := n.release(e.Name)
		if r.status.State == lifecycle.Withdrawn {
			// Deployed again since it was withdrawn.
			r.status.State, r.status.Reason = lifecycle.Pending, ""
		}
		state := r.status.State
		n.mu.Unlock()
		// A release downloaded and waiting for a window or an operator
		// stays parked until one of them says go.
		if lifecycle.Settled(state) || (state == lifecycle.Downloaded && !n.installsAtOnce(e.Name, p)) {
			continue
		}
		n.work.start(e.Name, func(ctx context.Context) error { return n.runRelease(ctx, e, p) },
			func(err error, backoff time.Duration) {
				n.log.Warn("agent: download failed; retrying", "release", e.Name, "in", backoff, "err", err)
				n.mu.Lock()
				r := n.release(e.Name)
				r.status.State, r.status.Reason = lifecycle.Downloading, fleet.CutReason(fmt.Sprintf("retrying in %s: %v", backoff, err))
				n.mu.Unlock()
			}, n.reconcile)
	}
}

// withdraw acts on a release withdrawn from the index: one this node has
// not installed stops where it is (an install under way finishes first);
// one it installed stays so, unless the withdrawal asks for its uninstall
// command to run.
func (n *node) withdraw(e manifest.IndexEntry) {
	n.mu.Lock()
	r, known := n.releases[e.Name]
	state := ""
	if known {
		state = r.status.State
	}
	n.mu.Unlock()
	var rec InstallRecord
	installed, err := n.db.get(bucketInstalled, e.Name, &rec)
	if err != nil {
		n.log.Error("agent: read install record", "release", e.Name, "err", err)
		return
	}
	switch {
	case !known, state == lifecycle.Withdrawn, state == lifecycle.Uninstalled, state == lifecycle.Retired, state == lifecycle.Refused:
	case state == lifecycle.Installing:
		// It finishes; the next reconcile finds it installed.
	case installed:
		// A failed uninstall waits, as a failed install does, for an
		// operator's retry.
		if e.Uninstall && rec.CID == e.CID && state != lifecycle.Failed {
			n.work.start(e.Name, func(ctx context.Context) error { return n.uninstall(ctx, e) },
				func(err error, backoff time.Duration) {
					n.log.Warn("agent: uninstall failed; retrying", "release", e.Name, "in", backoff, "err", err)
				}, n.reconcile)
		}
	default:
		n.work.stop(e.Name)
		n.setLife(e.Name, lifecycle.Withdrawn, "withdrawn from the index")
	}
}

// uninstall runs the uninstall command of an installed release that was
// withdrawn with uninstall, removes its files and keeps the record, moved
// to retired and marked uninstalled. A command that fails leaves the
// release failed, with its reason, until an operator orders a retry.
func (n *node) uninstall(ctx context.Context, e manifest.IndexEntry) error {
	r, err := n.peer.Catalog.Get(e.Name)
	if err != nil {
		return err
	}
	n.installMu.Lock()
	defer n.installMu.Unlock()
	rec, err := n.installer.uninstall(ctx, r.Manifest, func(reason string) { n.setLife(e.Name, lifecycle.Installed, reason) })
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		n.setLife(e.Name, lifecycle.Failed, "uninstall: "+err.Error())
		return nil
	}
	n.setLife(e.Name, lifecycle.Uninstalled, "withdrawn; its uninstall command ran at "+rec.UninstalledAt.Format(time.RFC3339))
	n.collectSoon()
	return nil
}

// runRelease takes one release deployed to this node as far as it can go
// now. It returns an error only for a download that should be retried.
func (n *node) runRelease(ctx context.Context, e manifest.IndexEntry, p lifecycle.Plan) error {
	// A hotfix waiting for its service pack downloads meanwhile, so it
	// installs as soon as the pack is in.
	pre, settled := n.decide(e.Name, false)
	if settled {
		return nil
	}
	m, id, asm, err := n.download(ctx, e, pre.Action != lifecycle.ActionBlocked && n.installsAtOnce(e.Name, p))
	if err != nil {
		return err
	}
	defer asm.Discard() // unless the install took it
	// One install at a time, and the rules asked again under the lock: a
	// service pack installed meanwhile changes the verdict on a hotfix.
	n.installMu.Lock()
	defer n.installMu.Unlock()
	d, settled := n.decide(e.Name, true)
	if settled {
		return nil
	}
	n.mu.Lock()
	requested := n.release(e.Name).lasting.InstallRequested
	n.mu.Unlock()
	if p.Assigned {
		if ok, next := p.Open(n.clock.Now()); !ok {
			n.setLife(e.Name, lifecycle.Downloaded, "waiting for the maintenance window "+p.WindowText())
			n.after(next.Sub(n.clock.Now()), n.reconcile)
			return nil
		}
	} else if !requested {
		n.setLife(e.Name, lifecycle.Downloaded, "available: install it with patchctl install")
		return nil
	}
	n.setLife(e.Name, lifecycle.Installing, "")
	rec, err := n.installer.install(ctx, m, id, asm, func(reason string) { n.setLife(e.Name, lifecycle.Installing, reason) })
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopping: the install runs again at the next start
		}
		if missing := n.missingChunks(ctx, m); missing > 0 {
			// A chunk damaged on disk was quarantined by the read that
			// found it: the download brings it again, then the install
			// runs again (its commands had not started).
			n.log.Warn("agent: chunks of the release were damaged in the store; fetching them again", "release", e.Name, "chunks", missing, "err", err)
			return fmt.Errorf("%d chunks were damaged in the store and are fetched again: %w", missing, err)
		}
		n.setLife(e.Name, lifecycle.Failed, err.Error())
		return nil
	}
	state := lifecycle.Installed
	if rec.RestartRequired {
		state = lifecycle.RestartRequired
	}
	if requested {
		n.mu.Lock()
		prog := n.release(e.Name).lasting
		n.mu.Unlock()
		prog.InstallRequested = false
		n.keep(e.Name, prog)
	}
	n.setLife(e.Name, state, "")
	if len(d.Retire) > 0 {
		n.retire(d.Retire, e.Name)
	}
	n.dropSoon()
	// A hotfix blocked on this service pack may go now.
	n.after(0, n.reconcile)
	return nil
}

// missingChunks counts the chunks of m the store does not hold.
func (n *node) missingChunks(ctx context.Context, m *manifest.Manifest) int {
	missing := 0
	for _, id := range m.ChunkIDs() {
		if ok, err := n.peer.Store.Has(ctx, id); err == nil && !ok {
			missing++
		}
	}
	return missing
}

// installsAtOnce reports whether name, once downloaded, will install
// without waiting: asked for, or assigned with a window open now.
func (n *node) installsAtOnce(name string, p lifecycle.Plan) bool {
	n.mu.Lock()
	requested := n.release(name).lasting.InstallRequested
	n.mu.Unlock()
	if requested {
		return true
	}
	ok, _ := p.Open(n.clock.Now())
	return p.Assigned && ok
}

// decide applies the pack rules to name on this node and records a verdict
// that ends the work for now: installed already, refused, or (with
// blockedToo) blocked. It reports whether it did.
func (n *node) decide(name string, blockedToo bool) (lifecycle.Decision, bool) {
	d, err := lifecycle.Decide(name, n.conf.Target, n.installedNames())
	switch {
	case err != nil:
		n.setLife(name, lifecycle.Refused, err.Error())
	case d.Action == lifecycle.ActionInstalled:
		n.setLife(name, lifecycle.Installed, "")
	case d.Action == lifecycle.ActionRefused:
		n.setLife(name, lifecycle.Refused, d.Reason)
	case d.Action == lifecycle.ActionBlocked && blockedToo:
		n.setLife(name, lifecycle.Blocked, d.Reason)
	default:
		return d, false
	}
	return d, true
}

// download brings a release's chunks to this node: the envelope from the
// proxy, the chunks from the proxy and the site peers the tracker names.
// With stage, it also lays out the release's files as the chunks arrive,
// for an install that follows at once, and returns the assembly (nil
// otherwise, or if it could not start one).
func (n *node) download(ctx context.Context, e manifest.IndexEntry, stage bool) (_ *manifest.Manifest, _ cid.Cid, asm *store.Assembly, err error) {
	env, m, id, err := n.envelopeFor(ctx, e, n.up.ids)
	if err != nil {
		return nil, cid.Undef, nil, err
	}
	if stage {
		asm = n.startAssembly(m)
		defer func() {
			if err != nil {
				asm.Discard()
				asm = nil
			}
		}()
	}
	n.mu.Lock()
	n.release(e.Name).status.CID = e.CID
	n.mu.Unlock()
	n.setLife(e.Name, lifecycle.Downloading, "")
	peers := slices.Clone(n.up.ids)
	opts := FetchOptions{Swarm: p2p.FetchConfig{IdleTimeout: fetchIdle}}
	if asm != nil {
		opts.Swarm.Content = asm.Place
	}
	var seeded seedResult
	opts.Seed = func(ctx context.Context, stored func(cid.Cid)) {
		seeded = n.seedFromInstalled(ctx, m, asm, stored)
	}
	opts.Progress = func(pr p2p.FetchProgress) {
		n.mu.Lock()
		r := n.release(e.Name)
		r.status.Bytes, r.status.Total = pr.BytesDone, pr.BytesTotal
		n.mu.Unlock()
	}
	if !n.conf.NoSwarm {
		more := make(chan []peer.ID, 1)
		opts.Swarm.MorePeers = more
		tctx, stop := context.WithCancel(ctx)
		defer stop()
		peers = append(peers, n.report(tctx, e.CID, id)...)
		peers = append(peers, n.sitePeers()...)
		n.tasks.Go(func(context.Context) { n.askTracker(tctx, e.CID, id, peers, more) })
	}
	sum, err := n.peer.fetchRelease(ctx, env, m, id, peers, n.peer.Store, opts, n.clock.Now())
	if err != nil {
		return nil, cid.Undef, nil, err
	}
	// The chunks seeded were present when the swarm fetch began.
	n.log.Info("agent: fetch done", "release", m.Name, "chunks_total", sum.ChunksTotal,
		"chunks_present", sum.ChunksPresent-seeded.Chunks, "chunks_seeded", seeded.Chunks, "chunks_fetched", sum.ChunksFetched,
		"bytes", sum.BytesFetched, "bytes_seeded", seeded.Bytes, "seconds", sum.Seconds)
	n.mu.Lock()
	n.release(e.Name).dropped = false // pinned again
	n.mu.Unlock()
	n.setLife(e.Name, lifecycle.Downloaded, "")
	return m, id, asm, nil
}

// askTracker asks the tracker for site peers fetching or holding the
// release of manifest CID want while ctx lasts, and hands the ones not in
// given to the fetch. The tracker names the same peers again and again once
// a site has settled: it asks less often while it names no new one.
func (n *node) askTracker(ctx context.Context, releaseCID string, want cid.Cid, given []peer.ID, more chan<- []peer.ID) {
	seen := make(map[peer.ID]bool, len(given))
	for _, p := range given {
		seen[p] = true
	}
	period := trackerPeriod
	t := n.clock.Timer(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var fresh []peer.ID
		for _, p := range append(n.report(ctx, releaseCID, want), n.sitePeers()...) {
			if !seen[p] {
				seen[p] = true
				fresh = append(fresh, p)
			}
		}
		period = min(2*period, maxTrackerPeriod)
		if len(fresh) > 0 {
			period = trackerPeriod
			select {
			case more <- fresh:
			case <-ctx.Done():
				return
			}
		}
		t.Reset(period)
	}
}

// startAssembly starts staging m's files beside where the install puts
// them, after removing what an earlier process left of the same. Staging
// only saves work: if it cannot start, the install assembles the files
// from the store.
func (n *node) startAssembly(m *manifest.Manifest) *store.Assembly {
	base := filepath.Join(n.cfg.DataDir, installedDir)
	err := os.MkdirAll(base, 0o755)
	if err == nil {
		err = store.RemoveAssemblies(base, m.Name)
	}
	var asm *store.Assembly
	if err == nil {
		asm, err = store.NewAssembly(m, base)
	}
	if err != nil {
		n.log.Warn("agent: cannot stage files during the download; the install assembles them afterwards", "release", m.Name, "err", err)
		return nil
	}
	return asm
}

// retire moves the install records of names to retired, as installing by
// (a newer service pack) demands.
func (n *node) retire(names []string, by string) {
	moved, err := n.db.retire(names, by, n.clock.Now().UTC())
	if err != nil {
		n.log.Error("agent: retire", "releases", names, "by", by, "err", err)
		return
	}
	for _, rec := range moved {
		if err := n.installer.moveMarker(rec.Name); err != nil {
			n.log.Warn("agent: move install record", "release", rec.Name, "err", err)
		}
		n.setLife(rec.Name, lifecycle.Retired, "retired by "+by)
	}
	if len(moved) > 0 {
		n.collectSoon()
	}
}

// report sends this node's report to its site's tracker and returns the
// site peers it names for want (if defined), with their addresses added.
// releaseCID, if set, is the release being fetched: it is reported as such.
func (n *node) report(ctx context.Context, releaseCID string, want cid.Cid) []peer.ID {
	r := &fleet.TrackerReport{Site: n.conf.Site, Target: n.conf.Target, Labels: n.conf.Labels, Deployments: n.deployments()}
	n.mu.Lock()
	for _, rel := range n.releases {
		// A release whose chunks were let go is not offered to the
		// site: its peers get it from the proxy.
		if rel.status.CID == "" || rel.status.CID == releaseCID || rel.dropped {
			continue
		}
		if held := heldAs(rel.status); held != "" {
			r.Releases = append(r.Releases, fleet.TrackedRelease{CID: rel.status.CID, State: held})
		}
	}
	n.mu.Unlock()
	slices.SortFunc(r.Releases, func(x, y fleet.TrackedRelease) int { return strings.Compare(x.CID, y.CID) })
	if releaseCID != "" {
		r.Releases = append(r.Releases, fleet.TrackedRelease{CID: releaseCID, State: fleet.StateFetching})
	}
	if len(r.Releases) > fleet.MaxTrackedReleases {
		r.Releases = r.Releases[len(r.Releases)-fleet.MaxTrackedReleases:]
	}
	if want.Defined() {
		r.Want = want.String()
	}
	var ids []peer.ID
	var errs []error
	for _, proxy := range n.up.ids {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := n.tracker.Track(rctx, proxy, r)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = nil
		for _, info := range res.Peers {
			n.peer.Host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.TempAddrTTL)
			ids = append(ids, info.ID)
		}
		n.retryOrdered(ctx, res.Retry)
		break
	}
	if ctx.Err() == nil {
		n.outage("reporting to the site's tracker", errors.Join(errs...), "proxies", n.up.ids)
	}
	return ids
}

// heldAs is how a release in status s is held, as the tracker hears of it:
// installed, held whole, being fetched, or (empty) not at all.
func heldAs(s fleet.DeploymentStatus) string {
	switch {
	case lifecycle.InEffect(s.State):
		return fleet.StateInstalled
	case s.Have:
		return fleet.StateHave
	case s.State == lifecycle.Downloading:
		return fleet.StateFetching
	}
	return ""
}

func (n *node) reportUp(ctx context.Context) { n.report(ctx, "", cid.Undef) }

// retryOrdered acts on retry orders from upstream: a failed release of this
// node is run again once per generation.
func (n *node) retryOrdered(ctx context.Context, orders []fleet.RetryOrder) {
	self := n.peer.Host.ID().String()
	again := false
	for _, o := range orders {
		if o.Node != "" && o.Node != self {
			continue
		}
		n.mu.Lock()
		r, known := n.releases[o.Release]
		if !known || o.Generation <= r.lasting.Retry {
			n.mu.Unlock()
			continue
		}
		prog := r.lasting
		prog.Retry = o.Generation
		r.status.Retry = o.Generation
		failed := r.status.State == lifecycle.Failed
		if failed {
			r.status.State, r.status.Reason = lifecycle.Pending, ""
			prog.State, prog.Reason = "", ""
			again = true
		}
		n.mu.Unlock()
		n.keep(o.Release, prog)
		if failed {
			n.log.Info("agent: retry ordered", "release", o.Release, "generation", o.Generation)
		}
	}
	if again {
		n.changed()
		n.reconcile(ctx)
	}
}

// deployments returns this node's releases, for its reports.
func (n *node) deployments() []fleet.DeploymentStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]fleet.DeploymentStatus, 0, len(n.releases))
	for _, r := range n.releases {
		out = append(out, r.status)
	}
	slices.SortFunc(out, func(x, y fleet.DeploymentStatus) int { return strings.Compare(x.Release, y.Release) })
	if len(out) > fleet.MaxReportedDeployments {
		out = out[len(out)-fleet.MaxReportedDeployments:]
	}
	return out
}

func (n *node) Health(context.Context) (adminapi.Health, error) {
	h := n.health()
	h.Site, h.Target, h.Labels = n.conf.Site, n.conf.Target, n.conf.Labels
	return h, nil
}

func (n *node) Index(context.Context) ([]byte, error) { return n.indexEnvelope() }

// NodeStatus returns the node's releases.
func (n *node) NodeStatus(context.Context) (adminapi.NodeStatus, error) {
	return adminapi.NodeStatus{Deployments: n.deployments()}, nil
}

// Install asks the node to install an available release deployed to it, or
// to run again a failed install of any release.
func (n *node) Install(ctx context.Context, name string) (adminapi.InstallResult, error) {
	if _, err := manifest.ParsePackName(name); err != nil {
		return adminapi.InstallResult{}, fmt.Errorf("%w: %w", adminapi.ErrUsage, err)
	}
	ix := n.current()
	targeted := false
	if ix != nil {
		if e, ok := ix.Lookup(name); ok {
			targeted = lifecycle.PlanFor(ix, e, n.facts).Targeted
		}
	}
	if !targeted {
		return adminapi.InstallResult{}, fmt.Errorf("release %s is not deployed to this node: %w", name, ErrReleaseNotFound)
	}
	n.mu.Lock()
	r := n.release(name)
	state, reason := r.status.State, r.status.Reason
	switch state {
	case lifecycle.Installed, lifecycle.RestartRequired:
		n.mu.Unlock()
		return adminapi.InstallResult{Release: name, State: state}, nil
	case lifecycle.Retired, lifecycle.Refused:
		n.mu.Unlock()
		return adminapi.InstallResult{}, fmt.Errorf("%s is %s here (%s) and is not installed again: %w", name, state, reason, adminapi.ErrConflict)
	case lifecycle.Failed:
		r.status.State, r.status.Reason = lifecycle.Pending, ""
		state = lifecycle.Pending
	}
	prog := r.lasting
	n.mu.Unlock()
	prog.InstallRequested = true
	prog.State, prog.Reason = "", ""
	n.keep(name, prog)
	n.changed()
	n.reconcile(ctx)
	return adminapi.InstallResult{Release: name, State: state}, nil
}

// About lists what this node has installed, what was retired, and the
// releases on their way or stopped, with their reasons.
func (n *node) About(context.Context) (adminapi.About, error) {
	ab := adminapi.About{Installed: []adminapi.AboutEntry{}, Retired: []adminapi.AboutEntry{}, Others: []adminapi.AboutEntry{}}
	recorded := map[string]bool{}
	for _, b := range []struct {
		bucket []byte
		state  string
		out    *[]adminapi.AboutEntry
	}{{bucketInstalled, lifecycle.Installed, &ab.Installed}, {bucketRetired, lifecycle.Retired, &ab.Retired}} {
		recs, err := n.db.records(b.bucket)
		if err != nil {
			return ab, err
		}
		for _, r := range recs {
			n.mu.Lock()
			restart := r.RestartRequired && n.release(r.Name).status.State == lifecycle.RestartRequired
			n.mu.Unlock()
			state := b.state
			if restart {
				state = lifecycle.RestartRequired
			}
			recorded[r.Name] = true
			*b.out = append(*b.out, adminapi.AboutEntry{Name: r.Name, State: state, InstalledAt: r.InstalledAt, RestartRequired: restart, RetiredAt: r.RetiredAt, RetiredBy: r.RetiredBy})
		}
	}
	for _, d := range n.deployments() {
		if !recorded[d.Release] {
			ab.Others = append(ab.Others, adminapi.AboutEntry{Name: d.Release, State: d.State, Reason: d.Reason})
		}
	}
	return ab, nil
}
