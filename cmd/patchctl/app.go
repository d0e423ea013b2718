package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/agent"
	"github.com/patchctl/patchctl/store"
)

// Exit codes, documented in the README; package adminapi maps each class
// of error to one.
const (
	exitOK    = adminapi.ExitOK
	exitUsage = adminapi.ExitUsage
)

// exitError carries the exit code for an error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	}
	return adminapi.Classify(err).ExitCode()
}

// jsonFlag is accepted globally and on every subcommand.
var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON on stdout"}

func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "patchctl")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "patchctl")
	}
	return "patchctl-data"
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "patchctl",
		Usage: "publish, verify and distribute signed, content-addressed service packs",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "data-dir",
				Usage:   "where chunks, pins and releases are kept",
				EnvVars: []string{"PATCHCTL_DATA_DIR"},
				Value:   defaultDataDir(),
			},
			jsonFlag,
		},
		Commands: []*cli.Command{
			keyCommand(),
			trustCommand(),
			publishCommand(),
			signCommand(),
			pushCommand(),
			verifyCommand(),
			extractCommand(),
			lsCommand(),
			fsckCommand(),
			gcCommand(),
			rmCommand(),
			serveCommand(),
			agentCommand(),
			deployCommand(),
			withdrawCommand(),
			enrolCommand(),
			statusCommand(),
			retryCommand(),
			installCommand(),
			aboutCommand(),
			fetchCommand(),
			idCommand(),
			indexCommand(),
		},
		Version:        version(),
		Writer:         stdout,
		ErrWriter:      stderr,
		ExitErrHandler: func(*cli.Context, error) {}, // run maps errors to exit codes
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return &exitError{code: exitUsage, err: err}
		},
	}
	app.Commands = append(app.Commands, extraCommands()...)
	for _, c := range app.Commands {
		prepare(c)
	}
	return app
}

// version is the module version and VCS revision the binary was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 12:
			v += " " + s.Value[:12]
		case s.Key == "vcs.modified" && s.Value == "true":
			v += "+modified"
		}
	}
	return v
}

// prepare gives every command the --json flag, and makes a missing
// required flag a command-line mistake (exit 2) that names it: urfave/cli
// reports it as an error of no particular kind.
func prepare(c *cli.Command) {
	if c.Action != nil {
		c.Flags = append(c.Flags, jsonFlag)
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return &exitError{code: exitUsage, err: err}
		}
		var required []string
		for _, f := range c.Flags {
			if r, ok := f.(cli.RequiredFlag); ok && r.IsRequired() {
				required = append(required, f.Names()[0])
				unrequire(f)
			}
		}
		if len(required) > 0 {
			action := c.Action
			c.Action = func(ctx *cli.Context) error {
				for _, name := range required {
					if !ctx.IsSet(name) {
						return usageError("%s: --%s is required", ctx.Command.FullName(), name)
					}
				}
				return action(ctx)
			}
		}
	}
	for _, sub := range c.Subcommands {
		prepare(sub)
	}
}

// unrequire clears a flag's Required, which prepare checks instead.
func unrequire(f cli.Flag) {
	switch f := f.(type) {
	case *cli.StringFlag:
		f.Required = false
	case *cli.StringSliceFlag:
		f.Required = false
	case *cli.BoolFlag:
		f.Required = false
	case *cli.IntFlag:
		f.Required = false
	case *cli.DurationFlag:
		f.Required = false
	case *cli.Uint64Flag:
		f.Required = false
	}
}

// run executes the command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	var unknown string
	app.CommandNotFound = func(_ *cli.Context, name string) { unknown = name }
	err := app.RunContext(ctx, reorderArgs(app, args))
	if err == nil && unknown != "" {
		err = usageError("no command %q; see patchctl --help", unknown)
		if unknown == "demo" {
			err = usageError("the demo is a build of its own: make demo (or go build -tags demo ./cmd/patchctl)")
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "patchctl: %v\n", err)
	}
	return exitCode(err)
}

// globals are the settings every subcommand shares.
type globals struct {
	dataDir string
	json    bool
	stdout  io.Writer
	stderr  io.Writer
}

func globalsOf(c *cli.Context) globals {
	g := globals{stdout: c.App.Writer, stderr: c.App.ErrWriter}
	// --json may stand before the subcommand or after it; each context of
	// the lineage holds its own.
	for _, x := range c.Lineage() {
		g.json = g.json || x.Bool("json")
	}
	g.dataDir = c.String("data-dir")
	return g
}

// printJSON writes v as one JSON object on its own line.
func (g globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// openStore opens the chunk store and release catalog under the data dir.
// One process at a time has a store open: on the data dir of a running
// agent it fails, saying which agent and how to ask it instead.
func (g globals) openStore() (*store.Disk, *agent.Catalog, error) {
	s, err := store.OpenDisk(g.dataDir)
	if errors.Is(err, store.ErrLocked) {
		who := "an agent"
		if info := readAgentInfo(g.dataDir); info != nil {
			who = fmt.Sprintf("the %s agent (pid %d)", info.Role, info.PID)
		}
		return nil, nil, fmt.Errorf("%s is running on the data dir %s and has its store open: stop it, or ask it (patchctl status, about, rm, gc): %w", who, g.dataDir, err)
	}
	if err != nil {
		return nil, nil, err
	}
	cat, err := agent.OpenCatalog(g.dataDir)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, cat, nil
}

// openStoreForReading opens the data dir's store and catalog to read them:
// beside a running agent, whose store is locked, it opens the store
// read-only, seeing the chunks the agent held when it was opened.
func (g globals) openStoreForReading() (*store.Disk, *agent.Catalog, error) {
	s, cat, err := g.openStore()
	if !errors.Is(err, store.ErrLocked) {
		return s, cat, err
	}
	s, err = store.OpenDiskReadOnly(g.dataDir)
	if err != nil {
		return nil, nil, err
	}
	cat, err = agent.OpenCatalog(g.dataDir)
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, cat, nil
}

// openStoreOrAgent opens the data dir's store and catalog, or, if the agent
// running on it has the store open, returns a client of that agent's admin
// API (with the token it keeps in the data dir) to ask it instead.
func (g globals) openStoreOrAgent(c *cli.Context) (*store.Disk, *agent.Catalog, *adminapi.Client, error) {
	s, cat, err := g.openStore()
	if err == nil || !errors.Is(err, store.ErrLocked) || readAgentInfo(g.dataDir) == nil {
		return s, cat, nil, err
	}
	ac, aerr := adminClient(c, g, "admin-url")
	if aerr != nil {
		return nil, nil, nil, fmt.Errorf("%w; its admin API: %w", err, aerr)
	}
	return nil, nil, ac, nil
}

// openCatalog opens the release catalog under the data dir alone: it may
// be read and written beside a running agent.
func (g globals) openCatalog() (*agent.Catalog, error) {
	return agent.OpenCatalog(g.dataDir)
}

// warnUnreadable says which catalog entries do not read as releases, and
// how to remove them.
func warnUnreadable(g globals, bad []agent.Unreadable) {
	for _, u := range bad {
		fmt.Fprintf(g.stderr, "patchctl: releases/%s.json is unreadable and skipped (%v); patchctl rm %s removes it\n", u.Name, u.Err, u.Name)
	}
}

// positive checks that a duration flag is above zero: a lifetime of zero
// would sign something already expired.
func positive(c *cli.Context, flag string) error {
	if c.Duration(flag) <= 0 {
		return usageError("--%s must be positive, not %s", flag, c.Duration(flag))
	}
	return nil
}

// exactArgs checks the number of positional arguments.
func exactArgs(c *cli.Context, n int, names string) error {
	if c.NArg() != n {
		return usageError("%s: want %s, got %d arguments", c.Command.FullName(), names, c.NArg())
	}
	return nil
}
