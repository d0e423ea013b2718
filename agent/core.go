package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"sync"

	"github.com/filecoin-project/go-clock"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/fleet"
	"github.com/patchctl/patchctl/manifest"
)

// core is what every role shares: the swarm peer, the state database, the
// signed index it follows and serves to the peers below it, the loop that
// polls and reports, and the goroutines it runs.
type core struct {
	cfg   Config
	role  Role
	log   *slog.Logger
	clock clock.Clock
	peer  *Peer
	db    *stateDB
	trust *trustChain
	index indexFile
	tasks tasks
	// mender fetches back what the store quarantines.
	mender *mender

	dirty chan struct{} // a state changed: report soon
	kick  chan struct{} // poll now: an upstream announced a newer index

	// adoptMu makes adopting an index one step: verified against the
	// index held, kept, then held.
	adoptMu sync.Mutex

	mu      sync.Mutex
	held    *manifest.Index
	heldEnv []byte
	// saidExpired is the version of the index last said to have expired.
	saidExpired uint64
	// failing are the recurring failures said, by what fails.
	failing    map[string]bool
	downstream map[peer.ID]time.Time // peers that polled this agent, when they last did
}

func newCore(ctx context.Context, cfg Config) (*core, error) {
	log := cfg.Logger.With("role", cfg.role())
	pc := cfg.PeerConfig
	pc.Logger = log
	p, err := NewPeer(ctx, pc)
	if err != nil {
		return nil, err
	}
	db, err := openStateDB(cfg.DataDir)
	if err != nil {
		p.Close()
		return nil, err
	}
	trust, err := loadTrust(db, cfg.Trust, cfg.ResetTrust, cfg.Clock.Now())
	if err != nil {
		db.Close()
		p.Close()
		return nil, err
	}
	c := &core{
		cfg: cfg, role: cfg.role(), log: log.With("self", p.Host.ID().ShortString()), clock: cfg.Clock,
		peer: p, db: db, trust: trust, index: indexFile{dir: cfg.DataDir},
		dirty: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		downstream: map[peer.ID]time.Time{},
		failing:    map[string]bool{},
		mender:     newMender(),
	}
	p.OnQuarantine(func(id cid.Cid) { c.mender.lose(id) })
	if err := c.loadIndex(); err != nil {
		c.log.Warn("agent: the index held is not usable; starting without one", "err", err)
	}
	return c, nil
}

// close closes the state database and the host.
func (c *core) close() {
	c.db.Close()
	c.peer.Close()
}

// loop polls, reports and follows announcements until ctx ends. A poll that
// no upstream answered is tried again soon, then less often, up to the poll
// interval, so that an agent started before its upstream catches up within
// seconds of it.
func (c *core) loop(ctx context.Context, r role) {
	failures := 0
	poll := func() time.Duration {
		defer r.reportUp(ctx)
		if r.poll(ctx) || ctx.Err() != nil {
			failures = 0
			return c.cfg.PollInterval
		}
		failures++
		return min(c.cfg.PollInterval, time.Second<<min(failures-1, 10))
	}
	next := c.clock.Timer(poll())
	defer next.Stop()
	var soon <-chan time.Time // reports of changes go at most once a second
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		case <-c.kick:
			next.Stop()
			select {
			case <-next.C:
			default:
			}
		case <-c.dirty:
			if soon == nil {
				soon = c.clock.After(time.Second)
			}
			continue
		case <-soon:
			soon = nil
			r.reportUp(ctx)
			continue
		}
		next.Reset(poll())
	}
}

// pollNow makes the loop poll at once.
func (c *core) pollNow() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// changed asks the loop to report soon.
func (c *core) changed() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// after runs fn after d in one of the agent's goroutines, unless the agent
// stops first.
func (c *core) after(d time.Duration, fn func(ctx context.Context)) {
	c.tasks.Go(func(ctx context.Context) {
		t := c.clock.Timer(d)
		defer t.Stop()
		select {
		case <-t.C:
			fn(ctx)
		case <-ctx.Done():
		}
	})
}

// current returns the index held, or nil.
func (c *core) current() *manifest.Index {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held
}

// Index serves the index protocol: the held index. It remembers the asker as
// a peer to push announcements to while it keeps polling.
func (c *core) Index(_ context.Context, from peer.ID) (uint64, []byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.downstream[from] = c.clock.Now()
	if c.held == nil {
		return 0, nil, nil
	}
	return c.held.Version, c.heldEnv, nil
}

// errNoIndex means the agent holds no index yet.
var errNoIndex = fmt.Errorf("no index yet: %w", adminapi.ErrNotFound)

// indexEnvelope is adminapi.Agent's Index for every role.
func (c *core) indexEnvelope() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.heldEnv == nil {
		return nil, errNoIndex
	}
	return c.heldEnv, nil
}

// health fills what every role says of itself.
func (c *core) health() adminapi.Health {
	h := adminapi.Health{PeerID: c.peer.Host.ID().String(), Role: string(c.role), Addrs: []string{}}
	for _, a := range c.peer.Addrs() {
		h.Addrs = append(h.Addrs, a.String())
	}
	h.TrustVersion = c.trust.current().Version
	if ix := c.current(); ix != nil {
		h.IndexVersion, h.IndexExpires = ix.Version, ix.Expires
		h.Warnings = expiryWarnings(ix, c.clock.Now())
	}
	return h
}

// expiryWarnings warn of an index that expired, or that will within a
// quarter of its lifetime: a week ahead for the default of 30 days.
func expiryWarnings(ix *manifest.Index, now time.Time) []string {
	left := ix.Expires.Sub(now)
	switch {
	case left < 0:
		return []string{fmt.Sprintf("the index (version %d) expired at %s: agents act on none of it until a key holder signs the next version (patchctl index renew)",
			ix.Version, ix.Expires.UTC().Format(time.RFC3339))}
	case left < ix.Expires.Sub(ix.Created)/4:
		return []string{fmt.Sprintf("the index (version %d) expires in %s (at %s): sign the next version before (patchctl index renew)",
			ix.Version, left.Round(time.Hour), ix.Expires.UTC().Format(time.RFC3339))}
	}
	return nil
}

// loadIndex takes the index kept in the data dir as the one held, expired
// or not: an expired index is not acted on (see usable), but the next
// version must build on it.
func (c *core) loadIndex() error {
	env, err := c.index.read()
	if err != nil || env == nil {
		return err
	}
	ix, _, err := c.trust.current().VerifyIndexExpired(env, c.clock.Now(), nil)
	if err != nil {
		return err
	}
	c.held, c.heldEnv = ix, env
	return nil
}

// usable returns the index held if it has not expired, or nil. An expired
// index is not acted on: no one may freeze a fleet on an old view by
// withholding the new one (the index's expiry is what says so).
func (c *core) usable() *manifest.Index {
	ix := c.current()
	if ix == nil {
		return nil
	}
	if c.clock.Now().After(ix.Expires) {
		c.mu.Lock()
		said := c.saidExpired == ix.Version
		c.saidExpired = ix.Version
		c.mu.Unlock()
		if !said {
			c.log.Error("agent: the index expired; nothing is replicated or installed until a newer one arrives (sign the next version: patchctl index renew)",
				"version", ix.Version, "expired", ix.Expires)
		}
		return nil
	}
	return ix
}

// adopt verifies env against the trust root and the index held, keeps it in
// the data dir and holds it, and announces it to the peers below. It
// returns the index and whether it is new; the same index again is not.
// Adoption is one step against the index held and against the data dir's
// index file (which `patchctl index add` may have written meanwhile), so
// two indexes of one version can never both be taken: the later one is
// manifest.ErrRollback.
func (c *core) adopt(env []byte) (*manifest.Index, bool, error) {
	c.adoptMu.Lock()
	defer c.adoptMu.Unlock()
	var ix *manifest.Index
	adopted := false
	err := c.index.locked(func() error {
		if err := c.takeIndexFile(); err != nil {
			c.log.Warn("agent: the index file is not usable", "err", err)
		}
		held := c.current()
		var err error
		ix, err = c.trust.current().VerifyIndex(env, c.clock.Now(), held)
		if err != nil || (held != nil && ix.Version == held.Version) {
			return err
		}
		if err := c.index.write(env); err != nil {
			return fmt.Errorf("keep index: %w", err)
		}
		c.hold(ix, env)
		adopted = true
		return nil
	})
	return ix, adopted, err
}

// adoptIndexFile holds the data dir's index file's index if it is newer
// than the one held.
func (c *core) adoptIndexFile() error {
	c.adoptMu.Lock()
	defer c.adoptMu.Unlock()
	return c.index.locked(c.takeIndexFile)
}

// takeIndexFile holds the index file's index if it is newer than the one
// held; c.adoptMu and the file's lock are held.
func (c *core) takeIndexFile() error {
	env, err := c.index.read()
	if err != nil || env == nil {
		return err
	}
	c.mu.Lock()
	same := string(env) == string(c.heldEnv)
	c.mu.Unlock()
	if same {
		return nil
	}
	held := c.current()
	ix, _, err := c.trust.current().VerifyIndexExpired(env, c.clock.Now(), held)
	if err != nil {
		return err
	}
	if held == nil || ix.Version > held.Version {
		c.hold(ix, env)
	}
	return nil
}

// hold makes ix the index held and announces it downstream; c.adoptMu is
// held.
func (c *core) hold(ix *manifest.Index, env []byte) {
	c.mu.Lock()
	c.held, c.heldEnv = ix, env
	peers := c.recentDownstream()
	c.mu.Unlock()
	c.log.Info("agent: index adopted", "version", ix.Version, "releases", len(ix.Releases), "deployments", len(ix.Deployments))
	for _, p := range peers {
		c.tasks.Go(func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := c.peer.client.Announce(ctx, p, ix.Version); err != nil {
				// It polls, and will catch up then.
				c.log.Debug("agent: announce failed", "to", p, "err", err)
			}
		})
	}
}

// outage logs a recurring failure of what (reporting to an upstream, a
// sibling's dial) once, at Warn, until it ends (err nil), which is logged at
// Info: a failure repeated every poll would bury everything else.
func (c *core) outage(what string, err error, attrs ...any) {
	c.mu.Lock()
	was := c.failing[what]
	c.failing[what] = err != nil
	c.mu.Unlock()
	switch {
	case err != nil && !was:
		c.log.Warn("agent: "+what+" failed; trying again at every poll", append(attrs, "err", err)...)
	case err != nil:
		c.log.Debug("agent: "+what+" failed", append(attrs, "err", err)...)
	case was:
		c.log.Info("agent: "+what+" works again", attrs...)
	}
}

// rootRotated tells the peers below of a new trust root, so that they
// follow it at once.
func (c *core) rootRotated() { c.nudgeDownstream() }

// recentDownstream returns the peers below that polled within a few
// intervals, forgetting the others: a peer gone for longer polls when it
// comes back, and the map stays bounded by the peers of the moment; c.mu
// is held.
func (c *core) recentDownstream() []peer.ID {
	var peers []peer.ID
	for p, seen := range c.downstream {
		if c.clock.Since(seen) > 3*c.cfg.PollInterval {
			delete(c.downstream, p)
			continue
		}
		peers = append(peers, p)
	}
	return peers
}

// nudgeDownstream asks the peers below to report now, for what the answer
// holds for them (a retry), instead of at their next poll.
func (c *core) nudgeDownstream() {
	c.mu.Lock()
	peers := c.recentDownstream()
	c.mu.Unlock()
	client := fleet.NewClient(c.peer.client)
	for _, p := range peers {
		c.tasks.Go(func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := client.Nudge(ctx, p); err != nil {
				c.log.Debug("agent: nudge failed; it polls", "to", p, "err", err)
			}
		})
	}
}

// envelopeFor returns e's signed envelope from the catalog, or from peers,
// verified and matching e.
func (c *core) envelopeFor(ctx context.Context, e manifest.IndexEntry, peers []peer.ID) ([]byte, *manifest.Manifest, cid.Cid, error) {
	if r, err := c.peer.Catalog.Get(e.CID); err == nil {
		if _, _, err := c.trust.current().VerifyManifest(r.Envelope, c.clock.Now()); err == nil {
			return r.Envelope, r.Manifest, r.CID, nil
		}
	}
	return c.peer.fetchEnvelope(ctx, c.trust.current(), e.CID, peers, c.clock.Now())
}

// workers runs the work on each release in a goroutine of its own, one at a
// time per release, and retries failed work with a backoff: soon, then less
// often, and at least every poll interval.
type workers struct {
	c        *core
	mu       sync.Mutex
	working  map[string]context.CancelFunc // stops the work on a release
	attempts map[string]int                // failures in a row, by release name
}

func newWorkers(c *core) *workers {
	return &workers{c: c, working: map[string]context.CancelFunc{}, attempts: map[string]int{}}
}

// busy reports whether release name is being worked on.
func (w *workers) busy(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.working[name] != nil
}

// stop ends the work on release name, if any runs: its context ends.
func (w *workers) stop(name string) {
	w.mu.Lock()
	cancel := w.working[name]
	w.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// start runs fn, the work on release name, unless it is running already.
// When fn fails (and neither the agent stops nor the work was stopped),
// failed is told the error and the backoff, and again runs after the
// backoff.
func (w *workers) start(name string, fn func(ctx context.Context) error, failed func(err error, backoff time.Duration), again func(ctx context.Context)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.working[name] != nil {
		return
	}
	// stopped ends the work's context when stop is called.
	stopped, stopWork := context.WithCancel(context.Background())
	started := w.c.tasks.Go(func(agentCtx context.Context) {
		ctx, cancel := context.WithCancel(agentCtx)
		unhook := context.AfterFunc(stopped, cancel)
		err := fn(ctx)
		ended := ctx.Err() != nil // the agent stops, or the work was stopped
		unhook()
		cancel()
		stopWork()
		w.mu.Lock()
		delete(w.working, name)
		if err == nil || ended {
			delete(w.attempts, name)
			w.mu.Unlock()
			return
		}
		w.attempts[name]++
		backoff := min(w.c.cfg.PollInterval, time.Second<<min(w.attempts[name]-1, 10))
		w.mu.Unlock()
		failed(err, backoff)
		w.c.after(backoff, again)
	})
	if started {
		w.working[name] = stopWork
	} else {
		stopWork()
	}
}

// pinsOf returns the releases pinned in the agent's store.
func (c *core) pinsOf(ctx context.Context) (map[string]bool, error) {
	pins, err := c.peer.Store.Pins(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(pins))
	for name := range pins {
		out[name] = true
	}
	return out, nil
}
