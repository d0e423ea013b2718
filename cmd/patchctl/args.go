package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// reorderArgs lets flags stand anywhere on the command line, as in most
// CLIs operators use: urfave/cli reads a command's flags only up to its
// first argument, so the arguments are reordered before they are parsed:
// the global flags first (wherever they were given), then the subcommand,
// its flags, and its arguments. "--" ends the flags; what follows it stays
// an argument. Flags this does not know are left among the flags, for the
// parser to refuse.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	var globals, path, flags, positional []string
	cmds := app.Commands
	var cmd *cli.Command
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		tok := rest[i]
		if tok == "--" {
			positional = append(positional, rest[i:]...)
			break
		}
		if name, ok := flagName(tok); ok {
			var f cli.Flag
			dst := &flags
			if cmd != nil {
				f = findFlag(cmd.Flags, name)
			}
			if f == nil {
				if g := findFlag(app.Flags, name); g != nil {
					f, dst = g, &globals
				}
			}
			*dst = append(*dst, tok)
			if f != nil && takesValue(f) && !strings.Contains(tok, "=") && i+1 < len(rest) {
				i++
				*dst = append(*dst, rest[i])
			}
			continue
		}
		// The first words that name commands are the command's path; the
		// others are its arguments.
		if len(positional) == 0 && (cmd == nil || len(cmd.Subcommands) > 0) {
			if c := findCommand(cmds, tok); c != nil {
				path = append(path, tok)
				cmd, cmds = c, c.Subcommands
				continue
			}
		}
		positional = append(positional, tok)
	}
	out := append([]string{args[0]}, globals...)
	out = append(out, path...)
	out = append(out, flags...)
	if len(positional) > 0 && positional[0] != "--" && cmd != nil && len(flags) > 0 {
		// Arguments that look like flags would be read as flags.
		if slices.ContainsFunc(positional, func(s string) bool { return strings.HasPrefix(s, "-") }) {
			out = append(out, "--")
		}
	}
	return append(out, positional...)
}

// flagName returns the name of a flag token (--name, -name, --name=value).
func flagName(tok string) (string, bool) {
	if len(tok) < 2 || tok[0] != '-' || tok == "-" {
		return "", false
	}
	name := strings.TrimLeft(tok, "-")
	name, _, _ = strings.Cut(name, "=")
	return name, name != ""
}

func findFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.Name == name || slices.Contains(c.Aliases, name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether a flag reads the next word as its value.
func takesValue(f cli.Flag) bool {
	if v, ok := f.(cli.DocGenerationFlag); ok {
		return v.TakesValue()
	}
	return true
}
