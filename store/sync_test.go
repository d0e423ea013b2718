package store

import (
	"context"
	"errors"
	"testing"
)

// TestSyncWaiterLeavesWhenItsContextEnds: a caller waiting for a flush that
// another leads returns its context's error once the context ends, while the
// flush goes on and its leader sees it through; a caller whose writes a
// finished flush covered returns at once.
func TestSyncWaiterLeavesWhenItsContextEnds(t *testing.T) {
	var f flusher
	started, release := make(chan struct{}), make(chan struct{})
	led := make(chan error)
	go func() {
		led <- f.wait(context.Background(), 1, func() (uint64, error) {
			close(started)
			<-release
			return 1, nil
		})
	}()
	<-started
	noFlush := func() (uint64, error) {
		t.Error("a second flush ran")
		return 0, nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	waited := make(chan error)
	go func() { waited <- f.wait(ctx, 1, noFlush) }()
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Errorf("a waiter whose context ended: %v, want context.Canceled", err)
	}
	close(release)
	if err := <-led; err != nil {
		t.Errorf("the leader: %v", err)
	}
	if err := f.wait(ctx, 1, noFlush); err != nil {
		t.Errorf("a waiter covered by the flush done: %v", err)
	}
}

// TestDiskSyncWithAnEndedContext: Sync with a context already ended returns
// its error and flushes nothing.
func TestDiskSyncWithAnEndedContext(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	data := text(1, 1000)
	if _, err := d.Add(t.Context(), data); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := d.Sync(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Sync: %v, want context.Canceled", err)
	}
	if d.flush.done != 0 {
		t.Errorf("Sync with an ended context flushed up to generation %d", d.flush.done)
	}
	if err := d.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
}
