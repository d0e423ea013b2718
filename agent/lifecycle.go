package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// A node's releases go through the lifecycle of p2p's states:
//
//	pending → downloading → downloaded → installing → installed | restart-required | failed
//	                        ↘ blocked (a prerequisite is missing; waits, downloaded)
//	refused (never on this node: wrong target or release line)
//
// Download errors are retried by the agent with a backoff; install failures
// stay failed, with the reason, until an operator orders a retry, as an
// install job that failed would in the tools patchctl replaces: a hook that
// failed once usually fails again until someone fixes the cause.

// plan is what the deployments of one release ask of this node.
type plan struct {
	targeted bool
	assigned bool     // an assigned deployment matches: install without being asked
	windows  []Window // of the assigned deployments; none, or a zero one, is any time
}

// open reports whether an assigned install may run at now, and if not, when
// it may next.
func (p plan) open(now time.Time) (bool, time.Time) {
	if len(p.windows) == 0 {
		return true, now
	}
	var next time.Time
	for _, w := range p.windows {
		if w.Contains(now) {
			return true, now
		}
		if n := w.NextOpen(now); next.IsZero() || n.Before(next) {
			next = n
		}
	}
	return false, next
}

func (p plan) windowText() string {
	var s []string
	for _, w := range p.windows {
		s = append(s, w.String())
	}
	return strings.Join(s, " or ")
}

// facts are what deployments' selectors match on this agent.
func (a *agentState) facts() NodeFacts {
	cfg := a.n.cfg.AgentConfig
	return NodeFacts{Site: cfg.Site, Target: cfg.Target, Node: a.n.Host.ID().String(), Labels: cfg.Labels}
}

// planFor returns what ix's deployments of e ask of a node with facts.
// Deployments whose selector or window does not parse match nothing: the
// index is signed, but an agent older than the operator's CLI may not know
// a newer syntax, and installing on a guess is worse than not installing.
func planFor(ix *manifest.Index, e manifest.IndexEntry, f NodeFacts) plan {
	var p plan
	if !e.ForSite(f.Site) {
		return p
	}
	anyTime := false
	for _, d := range ix.DeploymentsOf(e.Name) {
		sel, err := ParseSelector(d.Selector)
		if err != nil || !sel.Matches(f) {
			continue
		}
		w, err := ParseWindow(d.Window)
		if err != nil {
			continue
		}
		p.targeted = true
		if d.Mode == manifest.ModeAssigned {
			p.assigned = true
			if w.IsZero() {
				anyTime = true
			}
			p.windows = append(p.windows, w)
		}
	}
	if anyTime {
		p.windows = nil
	}
	return p
}

// deployedToSite reports whether a deployment of e may match a node of
// site: a proxy replicates only those releases.
func deployedToSite(ix *manifest.Index, e manifest.IndexEntry, site string) bool {
	if !e.ForSite(site) {
		return false
	}
	for _, d := range ix.DeploymentsOf(e.Name) {
		sel, err := ParseSelector(d.Selector)
		if err != nil {
			continue
		}
		if s, ok := sel.site(); !ok || s == site {
			return true
		}
	}
	return false
}

// site returns the value of the selector's site term, if it has one.
func (s Selector) site() (string, bool) {
	for _, t := range s.terms {
		if t.key == keySite {
			return t.value, true
		}
	}
	return "", false
}

// life returns the lifecycle entry of a release, creating it pending; a.mu
// is held.
func (a *agentState) life(name string) *p2p.DeploymentStatus {
	ds := a.lifecycle[name]
	if ds == nil {
		ds = &p2p.DeploymentStatus{Release: name, State: p2p.StatePending}
		a.lifecycle[name] = ds
	}
	return ds
}

// setLife moves a release to state with a reason, keeps what must outlast
// a restart, and has the change reported.
func (a *agentState) setLife(name, state, reason string) {
	a.mu.Lock()
	ds := a.life(name)
	changed := ds.State != state || ds.Reason != reason
	ds.State, ds.Reason = state, p2p.CutReason(reason)
	if state == p2p.StateInstalled || state == p2p.StateRestartRequired || state == p2p.StateDownloaded ||
		state == p2p.StateBlocked || state == p2p.StateInstalling || state == p2p.StateFailed {
		ds.Have = true
	}
	prog := a.progress[name]
	a.mu.Unlock()
	if !changed {
		return
	}
	if state == p2p.StateFailed || prog.State == p2p.StateFailed {
		prog.State, prog.Reason = "", ""
		if state == p2p.StateFailed {
			prog.State, prog.Reason = state, reason
		}
		a.saveProgress(name, prog)
	}
	a.log.Info("agent: release "+state, "release", name, "reason", reason)
	a.changed()
}

func (a *agentState) saveProgress(name string, prog releaseProgress) {
	a.mu.Lock()
	a.progress[name] = prog
	a.mu.Unlock()
	if err := a.db.put(bucketReleases, name, prog); err != nil {
		a.log.Error("agent: keep release state", "release", name, "err", err)
	}
}

// changed asks the loop to report soon.
func (a *agentState) changed() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// installedNames lists the releases installed, not retired.
func (a *agentState) installedNames() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var names []string
	for name, ds := range a.lifecycle {
		if ds.State == p2p.StateInstalled || ds.State == p2p.StateRestartRequired {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// reconcileNode starts work on every release deployed to this node that is
// not settled; a.mu is held.
func (a *agentState) reconcileNode() {
	f := a.facts()
	for _, e := range a.held.Releases {
		if a.working[e.Name] {
			continue
		}
		p := planFor(a.held, e, f)
		if !p.targeted {
			continue
		}
		switch a.life(e.Name).State {
		case p2p.StateInstalled, p2p.StateRestartRequired, p2p.StateRetired, p2p.StateFailed:
			continue
		}
		a.work(e.Name, func() error { return a.runRelease(e, p) }, func(err error, backoff time.Duration) {
			a.log.Warn("agent: download failed; retrying", "release", e.Name, "in", backoff, "err", err)
			ds := a.life(e.Name)
			ds.State, ds.Reason = p2p.StateDownloading, p2p.CutReason(fmt.Sprintf("retrying in %s: %v", backoff, err))
		})
	}
}

// work runs fn, the work on release name, in its own goroutine, and marks
// the release as being worked on until fn returns; a.mu is held. A success
// resets the release's failures. After a failure, unless the agent is
// stopping, failed records it (a.mu held) and reconcile runs again after a
// backoff: soon, then less often, and at least at every poll.
func (a *agentState) work(name string, fn func() error, failed func(err error, backoff time.Duration)) {
	a.working[name] = true
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := fn()
		a.mu.Lock()
		defer a.mu.Unlock()
		delete(a.working, name)
		if err == nil {
			delete(a.attempts, name)
			return
		}
		if a.ctx.Err() != nil {
			return
		}
		a.attempts[name]++
		backoff := min(a.pollInterval(), time.Second<<min(a.attempts[name]-1, 10))
		failed(err, backoff)
		time.AfterFunc(backoff, a.reconcile)
	}()
}

// runRelease takes one release deployed to this node as far as it can go
// now. It returns an error only for a download that should be retried.
func (a *agentState) runRelease(e manifest.IndexEntry, p plan) error {
	// A hotfix waiting for its service pack downloads meanwhile, so it
	// installs as soon as the pack is in.
	pre, settled := a.decide(e.Name, false)
	if settled {
		return nil
	}
	m, id, asm, err := a.download(e, pre.Action != ActionBlocked && a.installsAtOnce(e.Name, p))
	if err != nil {
		return err
	}
	defer asm.Discard() // unless the install took it
	// One install at a time, and the rules asked again under the lock: a
	// service pack installed meanwhile changes the verdict on a hotfix.
	a.installMu.Lock()
	defer a.installMu.Unlock()
	d, settled := a.decide(e.Name, true)
	if settled {
		return nil
	}
	a.mu.Lock()
	requested := a.progress[e.Name].InstallRequested
	a.mu.Unlock()
	if p.assigned {
		if ok, next := p.open(a.now()); !ok {
			a.setLife(e.Name, p2p.StateDownloaded, "waiting for the maintenance window "+p.windowText())
			a.after(next.Sub(a.now()), a.reconcile)
			return nil
		}
	} else if !requested {
		a.setLife(e.Name, p2p.StateDownloaded, "available: install it with patchctl install")
		return nil
	}
	a.setLife(e.Name, p2p.StateInstalling, "")
	rec, err := a.install(a.ctx, m, id, asm)
	if err != nil {
		if a.ctx.Err() != nil {
			return nil // stopping: the install runs again at the next start
		}
		a.setLife(e.Name, p2p.StateFailed, err.Error())
		return nil
	}
	state := p2p.StateInstalled
	if rec.RestartRequired {
		state = p2p.StateRestartRequired
	}
	if requested {
		a.mu.Lock()
		prog := a.progress[e.Name]
		a.mu.Unlock()
		prog.InstallRequested = false
		a.saveProgress(e.Name, prog)
	}
	a.setState(e, p2p.StateInstalled)
	a.setLife(e.Name, state, "")
	if len(d.Retire) > 0 {
		a.retire(d.Retire, e.Name)
	}
	// A hotfix blocked on this service pack may go now.
	a.after(0, a.reconcile)
	return nil
}

// installsAtOnce reports whether name, once downloaded, will install
// without waiting: asked for, or assigned with a window open now.
func (a *agentState) installsAtOnce(name string, p plan) bool {
	a.mu.Lock()
	requested := a.progress[name].InstallRequested
	a.mu.Unlock()
	if requested {
		return true
	}
	ok, _ := p.open(a.now())
	return p.assigned && ok
}

// decide applies the pack rules to name on this node and records a verdict
// that ends the work for now: installed already, refused, or (with
// blockedToo) blocked. It reports whether it did.
func (a *agentState) decide(name string, blockedToo bool) (Decision, bool) {
	d, err := Decide(name, a.n.cfg.Target, a.installedNames())
	switch {
	case err != nil:
		a.setLife(name, p2p.StateRefused, err.Error())
	case d.Action == ActionInstalled:
		a.setLife(name, p2p.StateInstalled, "")
	case d.Action == ActionRefused:
		a.setLife(name, p2p.StateRefused, d.Reason)
	case d.Action == ActionBlocked && blockedToo:
		a.setLife(name, p2p.StateBlocked, d.Reason)
	default:
		return d, false
	}
	return d, true
}

// after runs fn after d unless the agent stops first.
func (a *agentState) after(d time.Duration, fn func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx.Err() != nil {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			fn()
		case <-a.ctx.Done():
		}
	}()
}

// download brings a release's chunks to this node: the envelope from the
// proxy, the chunks from the proxy and the site peers the tracker names.
// With stage, it also lays out the release's files as the chunks arrive,
// for an install that follows at once, and returns the assembly (nil
// otherwise, or if it could not start one).
func (a *agentState) download(e manifest.IndexEntry, stage bool) (_ *manifest.Manifest, _ cid.Cid, asm *store.Assembly, err error) {
	ctx := a.ctx
	n := a.n
	proxies := a.upstreamIDs()
	env, m, id, err := a.envelopeFor(ctx, e, proxies)
	if err != nil {
		return nil, cid.Undef, nil, err
	}
	if stage {
		asm = a.startAssembly(m)
		defer func() {
			if err != nil {
				asm.Discard()
				asm = nil
			}
		}()
	}
	a.setState(e, p2p.StateFetching)
	a.setLife(e.Name, p2p.StateDownloading, "")
	peers := slices.Clone(proxies)
	opts := FetchOptions{Swarm: p2p.FetchConfig{IdleTimeout: fetchIdle}}
	if asm != nil {
		opts.Swarm.Content = asm.Place
	}
	opts.Progress = func(pr p2p.FetchProgress) {
		a.mu.Lock()
		ds := a.life(e.Name)
		ds.Bytes, ds.Total = pr.BytesDone, pr.BytesTotal
		a.mu.Unlock()
	}
	if !n.cfg.NoSwarm {
		more := make(chan []peer.ID, 1)
		opts.Swarm.MorePeers = more
		tctx, stop := context.WithCancel(ctx)
		defer stop()
		found := a.report(tctx, e, p2p.StateFetching, id)
		peers = append(peers, found...)
		peers = append(peers, a.sitePeers()...)
		given := make(map[peer.ID]bool, len(peers))
		for _, p := range peers {
			given[p] = true
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			// The tracker names the same peers again and again once a
			// site has settled: ask less often while it names no new one.
			period := trackerPeriod
			t := time.NewTimer(period)
			defer t.Stop()
			for {
				select {
				case <-tctx.Done():
					return
				case <-t.C:
				}
				var fresh []peer.ID
				for _, p := range append(a.report(tctx, e, p2p.StateFetching, id), a.sitePeers()...) {
					if !given[p] {
						given[p] = true
						fresh = append(fresh, p)
					}
				}
				period = min(2*period, maxTrackerPeriod)
				if len(fresh) > 0 {
					period = trackerPeriod
					select {
					case more <- fresh:
					case <-tctx.Done():
						return
					}
				}
				t.Reset(period)
			}
		}()
	}
	sum, err := n.fetchRelease(ctx, env, m, id, peers, n.Store, opts, time.Now())
	if err != nil {
		return nil, cid.Undef, nil, err
	}
	a.log.Info("agent: fetch done", "release", m.Name, "chunks_total", sum.ChunksTotal,
		"chunks_present", sum.ChunksPresent, "chunks_fetched", sum.ChunksFetched, "bytes", sum.BytesFetched, "seconds", sum.Seconds)
	a.setState(e, p2p.StateHave)
	a.setLife(e.Name, p2p.StateDownloaded, "")
	return m, id, asm, nil
}

// startAssembly starts staging m's files beside where the install puts
// them, after removing what an earlier process left of the same. Staging
// only saves work: if it cannot start, the install assembles the files
// from the store.
func (a *agentState) startAssembly(m *manifest.Manifest) *store.Assembly {
	base := filepath.Join(a.n.cfg.DataDir, installedDir)
	err := os.MkdirAll(base, 0o755)
	if err == nil {
		err = store.RemoveAssemblies(base, m.Name)
	}
	var asm *store.Assembly
	if err == nil {
		asm, err = store.NewAssembly(m, base)
	}
	if err != nil {
		a.log.Warn("agent: cannot stage files during the download; the install assembles them afterwards", "release", m.Name, "err", err)
		return nil
	}
	return asm
}

// retire moves the install records of names to retired, as installing by
// (a newer service pack) demands.
func (a *agentState) retire(names []string, by string) {
	moved, err := a.db.retire(names, by, a.now().UTC())
	if err != nil {
		a.log.Error("agent: retire", "releases", names, "by", by, "err", err)
		return
	}
	for _, rec := range moved {
		if err := a.moveMarker(rec.Name); err != nil {
			a.log.Warn("agent: move install record", "release", rec.Name, "err", err)
		}
		a.setLife(rec.Name, p2p.StateRetired, "retired by "+by)
		a.log.Info("agent: release retired", "release", rec.Name, "by", by)
	}
}

// RequestInstall asks a node to install an available release deployed to
// it, or to run again a failed install of any release.
func (n *Node) RequestInstall(name string) error {
	a := n.agent
	if a == nil || n.cfg.Role != RoleNode {
		return errNodeOnly
	}
	a.mu.Lock()
	var e manifest.IndexEntry
	ok := false
	if a.held != nil {
		e, ok = a.held.Lookup(name)
	}
	targeted := ok && planFor(a.held, e, a.facts()).targeted
	a.mu.Unlock()
	if !targeted {
		return fmt.Errorf("release %s is not deployed to this node: %w", name, ErrReleaseNotFound)
	}
	a.mu.Lock()
	prog := a.progress[name]
	ds := a.life(name)
	failed := ds.State == p2p.StateFailed
	if failed {
		ds.State, ds.Reason = p2p.StatePending, ""
	}
	a.mu.Unlock()
	prog.InstallRequested = true
	prog.State, prog.Reason = "", ""
	a.saveProgress(name, prog)
	a.reconcile()
	return nil
}

// retryOrdered acts on retry orders from upstream: a failed release of this
// node is run again once per generation.
func (a *agentState) retryOrdered(orders []p2p.RetryOrder) {
	self := a.n.Host.ID().String()
	again := false
	for _, o := range orders {
		if o.Node != "" && o.Node != self {
			continue
		}
		a.mu.Lock()
		prog := a.progress[o.Release]
		ds := a.lifecycle[o.Release]
		if o.Generation <= prog.Retry {
			a.mu.Unlock()
			continue
		}
		prog.Retry = o.Generation
		failed := ds != nil && ds.State == p2p.StateFailed
		if failed {
			ds.State, ds.Reason = p2p.StatePending, ""
			prog.State, prog.Reason = "", ""
			again = true
		}
		if ds != nil {
			ds.Retry = o.Generation
		}
		a.mu.Unlock()
		a.saveProgress(o.Release, prog)
		if failed {
			a.log.Info("agent: retry ordered", "release", o.Release, "generation", o.Generation)
		}
	}
	if again {
		a.changed()
		a.reconcile()
	}
}

// deployments returns this node's lifecycle entries, for its reports.
func (a *agentState) deployments() []p2p.DeploymentStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]p2p.DeploymentStatus, 0, len(a.lifecycle))
	for _, ds := range a.lifecycle {
		out = append(out, *ds)
	}
	slices.SortFunc(out, func(x, y p2p.DeploymentStatus) int { return strings.Compare(x.Release, y.Release) })
	if len(out) > p2p.MaxReportedDeployments {
		out = out[len(out)-p2p.MaxReportedDeployments:]
	}
	return out
}

// Deployments returns the node's progress on the releases deployed to it.
func (n *Node) Deployments() []p2p.DeploymentStatus {
	if n.agent == nil {
		return nil
	}
	return n.agent.deployments()
}

// loadLifecycle reads the node's lasting state: install records, retired
// ones, and failed installs with their reasons. Releases that were
// installed with a restart required are installed now: the agent restarted.
func (a *agentState) loadLifecycle() error {
	if err := a.importMarkers(); err != nil {
		return err
	}
	// Files staged by a download of an earlier run are only a head start,
	// and none is in use yet.
	if err := store.RemoveAssemblies(filepath.Join(a.n.cfg.DataDir, installedDir), ""); err != nil {
		a.log.Warn("agent: remove files staged by an earlier run", "err", err)
	}
	inst, err := a.db.records(bucketInstalled)
	if err != nil {
		return err
	}
	for _, rec := range inst {
		if rec.RestartRequired {
			rec.RestartRequired = false
			if err := a.db.put(bucketInstalled, rec.Name, rec); err != nil {
				return err
			}
			a.log.Info("agent: restart done; release in effect", "release", rec.Name)
		}
		a.lifecycle[rec.Name] = &p2p.DeploymentStatus{Release: rec.Name, State: p2p.StateInstalled, Have: true}
		a.states[rec.Name] = ReleaseState{Name: rec.Name, CID: rec.CID, State: p2p.StateInstalled}
	}
	ret, err := a.db.records(bucketRetired)
	if err != nil {
		return err
	}
	for _, rec := range ret {
		a.lifecycle[rec.Name] = &p2p.DeploymentStatus{Release: rec.Name, State: p2p.StateRetired, Reason: "retired by " + rec.RetiredBy}
	}
	return a.db.each(bucketReleases, func(name string, v []byte) error {
		var prog releaseProgress
		if err := json.Unmarshal(v, &prog); err != nil {
			return fmt.Errorf("release %s: %w", name, err)
		}
		a.progress[name] = prog
		if prog.State == p2p.StateFailed && a.lifecycle[name] == nil {
			a.lifecycle[name] = &p2p.DeploymentStatus{Release: name, State: p2p.StateFailed, Reason: prog.Reason, Have: true, Retry: prog.Retry}
		}
		return nil
	})
}
