package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/patchctl/patchctl/adminapi"
)

// Agent is the long-running agent of one role: the core every role shares
// (core.go) and the role itself, chosen once by New from the config: the
// origin (origin.go), a site's proxy (proxy.go) or a node (node.go).
type Agent struct {
	core *core
	role role
	ran  atomic.Bool
}

// role is what a role adds to the core. The core's loop calls its methods;
// nothing outside construction asks which role it is.
type role interface {
	adminapi.Agent
	// start registers the role's protocol services and serves the swarm;
	// goroutines it starts run in the core's tasks.
	start(ctx context.Context) error
	// poll learns of a newer index and acts on the one held. It runs at
	// start, at every poll tick and when an upstream announces a newer
	// index, and reports whether the upstreams answered.
	poll(ctx context.Context) bool
	// reportUp sends the agent's status up the tree.
	reportUp(ctx context.Context)
	// stop closes the role's services, once its goroutines have ended.
	stop()
	// mendFrom returns the peers that may hold a chunk the agent's store
	// quarantined.
	mendFrom() []peer.ID
}

// New opens the agent's data dir and state, and starts its host listening;
// nothing runs until Run.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c, err := newCore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var r role
	switch {
	case cfg.Origin != nil:
		r, err = newOrigin(c)
	case cfg.Proxy != nil:
		r, err = newProxy(ctx, c, *cfg.Proxy)
	default:
		r, err = newNode(c, *cfg.Node)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return &Agent{core: c, role: r}, nil
}

// Peer is the agent's member of the swarm: its host, store and catalog.
func (a *Agent) Peer() *Peer { return a.core.peer }

// API is what the agent answers on its admin API: adminapi.Agent, and the
// interfaces of its role (adminapi.Origin, Fleet or Node).
func (a *Agent) API() adminapi.Agent { return a.role }

// Run runs the agent until ctx ends, then stops it and closes its host and
// state. It returns only after every goroutine it started has ended.
func (a *Agent) Run(ctx context.Context) error {
	if !a.ran.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	defer a.core.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.core.tasks.open(ctx)
	if err := a.role.start(ctx); err != nil {
		cancel()
		a.core.tasks.wait()
		a.role.stop()
		return fmt.Errorf("agent: start: %w", err)
	}
	a.core.tasks.Go(func(ctx context.Context) { a.core.loop(ctx, a.role) })
	a.core.tasks.Go(func(ctx context.Context) { a.core.mend(ctx, a.role.mendFrom) })
	<-ctx.Done()
	a.core.log.Info("agent: stopping")
	// The goroutines first, which may still call the services, then the
	// services, which wait for their handlers.
	a.core.tasks.wait()
	a.role.stop()
	return nil
}

// Close releases what New opened, for an agent that is never Run.
func (a *Agent) Close() error {
	if a.ran.CompareAndSwap(false, true) {
		a.core.close()
	}
	return nil
}

// tasks runs an agent's goroutines, so that Run can wait for every one it
// started. Once wait has begun, Go starts nothing.
type tasks struct {
	mu     sync.Mutex
	ctx    context.Context
	closed bool
	wg     sync.WaitGroup
}

func (t *tasks) open(ctx context.Context) {
	t.mu.Lock()
	t.ctx = ctx
	t.mu.Unlock()
}

// Go runs fn in a goroutine with the agent's context, unless the agent is
// stopping (or not running yet); it reports whether it did.
func (t *tasks) Go(fn func(ctx context.Context)) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.ctx == nil || t.ctx.Err() != nil {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		fn(t.ctx)
	}()
	return true
}

// wait refuses new goroutines and waits for the running ones, which end
// with the agent's context.
func (t *tasks) wait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}
