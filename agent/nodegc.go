package agent

import (
	"cmp"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sys/unix"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/lifecycle"
	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// A node collects its garbage at start, after each install that retired
// releases and each uninstall, and every collectPeriod.
const collectPeriod = time.Hour

// collectSoon collects the node's garbage in one of its goroutines.
func (n *node) collectSoon() {
	n.tasks.Go(func(ctx context.Context) {
		if _, err := n.collect(ctx, store.DefaultGCGrace, false); err != nil && ctx.Err() == nil {
			n.log.Warn("agent: collecting garbage failed", "err", err)
		}
	})
}

// collectEvery collects the node's garbage at start, then every
// collectPeriod, until ctx ends.
func (n *node) collectEvery(ctx context.Context) {
	t := n.clock.Timer(0)
	defer t.Stop()
	first := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := n.collect(ctx, store.DefaultGCGrace, first); err != nil && ctx.Err() == nil {
			n.log.Warn("agent: collecting garbage failed", "err", err)
		}
		first = false
		t.Reset(collectPeriod)
	}
}

// CollectGarbage collects the node's garbage now: see collect.
func (n *node) CollectGarbage(ctx context.Context, grace time.Duration) (adminapi.GCReport, error) {
	return n.collect(ctx, grace, false)
}

// collect frees what the node no longer needs: the installed files and the
// chunks of retired releases, except the newest KeepServicePacks service
// packs retired (kept for a rollback); the chunks of uninstalled releases
// and of withdrawn ones never installed; and what a killed agent left:
// staging directories and temporary files, whatever grace says. Then it
// deletes the chunks no release pins that were written before grace.
// atStart: nothing is being fetched or installed yet.
func (n *node) collect(ctx context.Context, grace time.Duration, atStart bool) (adminapi.GCReport, error) {
	// No install runs meanwhile: it might need what is removed.
	n.installMu.Lock()
	defer n.installMu.Unlock()
	var rep adminapi.GCReport
	retired, err := n.db.records(bucketRetired)
	if err != nil {
		return rep, err
	}
	// Newest first: the service packs kept are the last retired.
	slices.SortFunc(retired, func(a, b InstallRecord) int { return cmp.Compare(b.RetiredAt.UnixNano(), a.RetiredAt.UnixNano()) })
	kept := 0
	for _, rec := range retired {
		id, _ := manifest.ParsePackName(rec.Name)
		if rec.UninstalledAt.IsZero() && id.Kind == manifest.ServicePack && kept < n.conf.KeepServicePacks {
			kept++
			continue
		}
		dropped, err := n.drop(ctx, rec.Name, rec.CID, &rep)
		if err != nil {
			return rep, err
		}
		if dropped {
			rep.Released = append(rep.Released, rec.Name)
		}
	}
	for _, name := range n.withdrawnNeverInstalled() {
		dropped, err := n.drop(ctx, name, "", &rep)
		if err != nil {
			return rep, err
		}
		if dropped {
			rep.Released = append(rep.Released, name)
		}
	}
	rep.LeftoversRemoved = n.removeLeftovers(atStart)

	res, err := CollectGarbage(ctx, n.peer.Store, n.peer.Catalog, nil, grace)
	rep.RemovedChunks, rep.RemovedBytes, rep.PinnedChunks, rep.FreshChunks = res.RemovedChunks, res.RemovedBytes, res.PinnedChunks, res.FreshChunks
	rep.TempsRemoved, rep.PacksRemoved, rep.PacksWritten, rep.SpaceReclaimed = res.TempsRemoved, res.PacksRemoved, res.PacksWritten, res.SpaceReclaimed
	if err != nil {
		return rep, err
	}
	if len(rep.Released) > 0 || rep.RemovedChunks > 0 || rep.LeftoversRemoved > 0 {
		n.log.Info("agent: garbage collected", "releases", rep.Released, "trees", rep.TreesRemoved,
			"leftovers", rep.LeftoversRemoved, "chunks", rep.RemovedChunks, "bytes", rep.RemovedBytes)
	}
	return rep, nil
}

// drop removes what the node holds of a release it is done with: its
// installed files, its pin and its envelope (the record of what happened to
// it stays). A release whose catalog entry is another version than
// cidWanted (if set) keeps its envelope and pin. It reports whether it
// removed anything.
func (n *node) drop(ctx context.Context, name, cidWanted string, rep *adminapi.GCReport) (bool, error) {
	dropped := false
	tree := filepath.Join(n.cfg.DataDir, installedDir, name)
	if _, err := os.Stat(tree); err == nil {
		// An install command of an earlier agent may still run in the
		// tree: it stays until that run ends.
		if free, err := n.hooksIdle(name); err != nil || !free {
			return false, err
		}
		if err := os.RemoveAll(tree); err != nil {
			return false, err
		}
		_ = os.Remove(filepath.Join(n.cfg.DataDir, installedDir, name+".manifest.json"))
		rep.TreesRemoved++
		dropped = true
	}
	r, err := n.peer.Catalog.Get(name)
	switch {
	case errors.Is(err, ErrReleaseNotFound):
		return dropped, nil
	case err != nil:
		n.log.Warn("agent: a release's envelope does not read; it stays", "release", name, "err", err)
		return dropped, nil
	case cidWanted != "" && r.CID.String() != cidWanted:
		return dropped, nil
	}
	if err := n.peer.Store.Unpin(ctx, name); err != nil {
		return dropped, err
	}
	n.mu.Lock()
	if r := n.releases[name]; r != nil {
		r.dropped = true
	}
	n.mu.Unlock()
	if err := n.peer.Catalog.Remove(name); err != nil {
		return dropped, err
	}
	return true, nil
}

// hooksIdle reports whether no install command of the release runs: its
// hook lock is free.
func (n *node) hooksIdle(name string) (bool, error) {
	f, err := os.OpenFile(filepath.Join(n.cfg.DataDir, hooksDir, name+".lock"), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false, nil
	}
	return true, unix.Flock(int(f.Fd()), unix.LOCK_UN)
}

// withdrawnNeverInstalled names the releases withdrawn before this node
// installed them.
func (n *node) withdrawnNeverInstalled() []string {
	n.mu.Lock()
	var names []string
	for name, r := range n.releases {
		if r.status.State == lifecycle.Withdrawn {
			names = append(names, name)
		}
	}
	n.mu.Unlock()
	var out []string
	for _, name := range names {
		if installed, err := n.db.get(bucketInstalled, name, &InstallRecord{}); err == nil && !installed {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// catalogTempAge: a catalog temp file older than this belongs to a writer
// that was killed, not to one writing now.
const catalogTempAge = time.Minute

// removeLeftovers removes what killed agents left: staging directories of
// installs and downloads beside the installed releases, and the catalog's
// temporary files. Those of releases being fetched or installed now stay,
// unless atStart. It returns how many it removed.
func (n *node) removeLeftovers(atStart bool) int {
	busy := map[string]bool{}
	if !atStart {
		n.mu.Lock()
		for name, r := range n.releases {
			if r.status.State == lifecycle.Downloading || r.status.State == lifecycle.Installing {
				busy[name] = true
			}
		}
		n.mu.Unlock()
	}
	removed := 0
	base := filepath.Join(n.cfg.DataDir, installedDir)
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), ".") || stagingOfBusy(e.Name(), busy) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(base, e.Name())); err != nil {
			n.log.Warn("agent: remove a leftover staging directory", "dir", e.Name(), "err", err)
			continue
		}
		removed++
	}
	dir := filepath.Join(n.cfg.DataDir, releasesDir)
	entries, _ = os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		if fi, err := e.Info(); err != nil || (!atStart && n.clock.Since(fi.ModTime()) < catalogTempAge) {
			continue
		}
		if os.Remove(filepath.Join(dir, e.Name())) == nil {
			removed++
		}
	}
	return removed
}

// stagingOfBusy reports whether a staging directory's name (".staging-NAME",
// ".NAME.assembly-…", or the extract's ".….staging-…" inside them) is that
// of a release being fetched or installed.
func stagingOfBusy(dir string, busy map[string]bool) bool {
	for name := range busy {
		if strings.Contains(dir, "."+name+".") || strings.HasSuffix(dir, ".staging-"+name) || strings.Contains(dir, ".staging-"+name+".") {
			return true
		}
	}
	return false
}

// dropSoon has dropLoop look at once for installed releases whose chunks
// the node may let go of.
func (n *node) dropSoon() {
	select {
	case n.dropWake <- struct{}{}:
	default:
	}
}

// dropLoop lets go of the chunks of installed releases (dropInstalled) at
// start, after each install, and, while some are still held because the
// site's proxy does not hold them whole yet or site peers still fetch them,
// again after a poll interval, doubling up to collectPeriod.
func (n *node) dropLoop(ctx context.Context) {
	if n.conf.KeepChunks {
		return
	}
	wait := n.cfg.PollInterval
	t := n.clock.Timer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.dropWake:
			wait = n.cfg.PollInterval
		case <-t.C:
		}
		if n.dropInstalled(ctx) {
			t.Reset(wait)
			wait = min(2*wait, collectPeriod)
		} else {
			t.Reset(collectPeriod)
		}
	}
}

// dropInstalled lets go of the chunks of each release installed here (or
// retired and kept) once the site's proxy holds it whole and no site peer
// is subscribed to what this node holds of it: it unpins the
// release and deletes the chunks nothing else needs, then collects the
// store so their space comes back. The installed files, the envelope and
// the records stay. A later download of anything those chunks belong to
// takes them from the installed files first (seedFromInstalled), then from
// the peers. It reports whether releases are left whose chunks it could not
// let go of yet.
func (n *node) dropInstalled(ctx context.Context) (pending bool) {
	dropped := false
	for _, name := range n.dropCandidates() {
		r, err := n.peer.Catalog.Get(name)
		if err != nil {
			continue // let go of whole, by collect
		}
		// Site peers still fetching it may ask this node for its
		// chunks: they go once they are done.
		ids := r.Manifest.ChunkIDs()
		if n.peer.fetchedFrom(r.CID) > 0 || !n.siteHolds(ctx, r.CID, len(ids)) {
			pending = true
			continue
		}
		// Under the install lock, the release still as it was: neither
		// reinstalled nor freed whole meanwhile.
		n.installMu.Lock()
		n.mu.Lock()
		rel := n.releases[name]
		still := rel != nil && !rel.dropped && droppable(rel.status.State) && rel.status.CID == r.CID.String()
		n.mu.Unlock()
		if !still {
			n.installMu.Unlock()
			continue
		}
		unpinned, chunks, bytes, err := n.peer.dropChunks(ctx, name, ids)
		if unpinned {
			n.mu.Lock()
			n.release(name).dropped = true
			n.mu.Unlock()
		}
		n.installMu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("agent: letting go of an installed release's chunks failed", "release", name, "err", err)
			}
			pending = true
			continue
		}
		if unpinned {
			dropped = true
			n.log.Info("agent: the site's proxy holds the release; its chunks were let go, its installed files kept", "release", name, "chunks", chunks, "bytes", bytes)
		}
	}
	if dropped {
		// The deleted chunks' packs are reclaimed, and the site hears
		// this node no longer offers them.
		if _, err := n.collect(ctx, store.DefaultGCGrace, false); err != nil && ctx.Err() == nil {
			n.log.Warn("agent: collecting garbage failed", "err", err)
		}
		n.changed()
	}
	return pending
}

// droppable reports whether a release in state holds its files installed
// on the node, so that its chunks may go.
func droppable(state string) bool {
	return lifecycle.InEffect(state) || state == lifecycle.Retired
}

// dropCandidates names the releases installed or retired whose chunks are
// still pinned, sorted.
func (n *node) dropCandidates() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var names []string
	for name, r := range n.releases {
		if !r.dropped && droppable(r.status.State) && r.status.CID != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// siteHolds reports whether an upstream of the node (its site's proxy)
// holds the release of manifest CID id, of chunks distinct chunks, whole:
// its have bitmap sets every chunk. A proxy claims the chunks of every
// release it replicated, which its cache fetches again if it evicted them.
func (n *node) siteHolds(ctx context.Context, id cid.Cid, chunks int) bool {
	for _, up := range n.up.ids {
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		sub, err := n.peer.client.OpenHave(hctx, up, id, chunks)
		if err != nil {
			cancel()
			continue
		}
		whole := sub.Have.Count() == chunks
		sub.Close()
		cancel()
		if whole {
			return true
		}
	}
	return false
}
