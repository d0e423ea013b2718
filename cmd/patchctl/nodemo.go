//go:build !demo

package main

import "github.com/urfave/cli/v2"

// extraCommands are the commands of the demo build, which links the
// in-process testnet; the production binary has none (see demo.go).
func extraCommands() []*cli.Command { return nil }
