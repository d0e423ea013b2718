package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

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
			verifyCommand(),
			extractCommand(),
			lsCommand(),
			fsckCommand(),
			gcCommand(),
			rmCommand(),
			serveCommand(),
			agentCommand(),
			deployCommand(),
			enrolCommand(),
			statusCommand(),
			retryCommand(),
			installCommand(),
			aboutCommand(),
			fetchCommand(),
			idCommand(),
			indexCommand(),
		},
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run maps errors to exit codes
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return &exitError{code: exitUsage, err: err}
		},
	}
	app.Commands = append(app.Commands, extraCommands()...)
	for _, c := range app.Commands {
		addJSONFlag(c)
	}
	return app
}

func addJSONFlag(c *cli.Command) {
	if c.Action != nil {
		c.Flags = append(c.Flags, jsonFlag)
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return &exitError{code: exitUsage, err: err}
		}
	}
	for _, sub := range c.Subcommands {
		addJSONFlag(sub)
	}
}

// run executes the command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	var unknown string
	app.CommandNotFound = func(_ *cli.Context, name string) { unknown = name }
	err := app.RunContext(ctx, args)
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
func (g globals) openStore() (*store.Disk, *agent.Catalog, error) {
	s, err := store.OpenDisk(g.dataDir)
	if err != nil {
		return nil, nil, err
	}
	cat, err := agent.OpenCatalog(g.dataDir)
	if err != nil {
		return nil, nil, err
	}
	return s, cat, nil
}

// exactArgs checks the number of positional arguments.
func exactArgs(c *cli.Context, n int, names string) error {
	if c.NArg() != n {
		return usageError("%s: want %s, got %d arguments (flags go before arguments)", c.Command.FullName(), names, c.NArg())
	}
	return nil
}
