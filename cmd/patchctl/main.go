// Command patchctl publishes, verifies, stores and distributes signed,
// content-addressed service packs. See the README for usage and exit codes.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// softMemoryLimit keeps the Go heap of a long publish or fetch near what it
// really holds (chunk buffers, the manifest being built): without it the
// collector lets the heap grow to twice the live data (docs/decisions/0014).
// GOMEMLIMIT in the environment overrides it.
const softMemoryLimit = 80 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(softMemoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
