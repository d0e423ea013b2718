package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A rotated trust root reaches a node that was offline while it happened:
// started again with its old --trust file, it follows the chain from its
// upstream and installs a release that only the new key signed. An agent
// given a root unrelated to the chain its data dir follows refuses to
// start, unless told to reset.
func TestARotatedTrustRootReachesANodeThatWasOffline(t *testing.T) {
	e := newEnv(t)
	origin := e.startAgent("origin", "--role", "origin")
	proxy := e.startAgent("proxy", "--role", "proxy", "--site", "a", "--upstream", origin.addr())
	node := e.startAgent("node", "--role", "node", "--site", "a", "--target", "server", "--upstream", proxy.addr())
	admin := []string{"--origin", origin.info.Admin, "--admin-token", origin.token()}
	e.ok(append([]string{"--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000005", "pack"}, admin...)...)
	e.ok(append([]string{"deploy", "--key", "release.key", "SP-S041000005"}, admin...)...)
	installed := func(name string) func() (bool, string) {
		return func() (bool, string) {
			state, reason := nodeStateOf(node, name)
			return state == "installed", state + " " + reason
		}
	}
	waitFor(t, "the node installs the first pack", installed("SP-S041000005"))
	node.stop()

	// Rotation while the node is off: the old key goes.
	var shown struct{ Keys []string }
	if err := json.Unmarshal([]byte(e.ok("trust", "show", "--json", "trust.json")), &shown); err != nil {
		t.Fatal(err)
	}
	e.ok("key", "generate", "--out", "next")
	e.ok("trust", "rotate", "--trust", "trust.json", "--key", "next.key", "--sign", "release.key", "--remove", shown.Keys[0], "--out", "trust2.json")
	if out := e.ok(append([]string{"trust", "push", "trust2.json"}, admin...)...); !strings.Contains(out, "version 2") {
		t.Errorf("trust push printed %q", out)
	}
	// The origin's index is still signed under the old root: the first
	// change after the rotation names both roots.
	e.fails(1, "--trust OLD --trust NEW", append([]string{"--data-dir", "release", "publish", "--key", "next.key", "--name", "SP-S041000006", "pack", "--trust", "trust2.json"}, admin...)...)
	e.ok(append([]string{"--data-dir", "release", "push", "--key", "next.key", "SP-S041000006", "--trust", "trust.json", "--trust", "trust2.json"}, admin...)...)
	e.ok(append([]string{"deploy", "--key", "next.key", "--trust", "trust2.json", "SP-S041000006"}, admin...)...)
	// The old key alone signs nothing the fleet takes any more.
	e.fails(1, "", append([]string{"deploy", "--key", "release.key", "--to", "site=a", "SP-S041000006"}, admin...)...)

	node.start() // with its old --trust file
	waitFor(t, "the node follows the new root and installs the pack only the new key signed", installed("SP-S041000006"))
	var h struct {
		TrustVersion uint64 `json:"trust_version"`
	}
	if err := node.getJSON("/v1/health", &h); err != nil || h.TrustVersion != 2 {
		t.Errorf("node health: trust version %d (%v), want 2", h.TrustVersion, err)
	}
	node.stop()

	// A root of no relation to the chain the data dir follows.
	e.ok("key", "generate", "--out", "stranger")
	e.ok("trust", "init", "--key", "stranger.key", "--out", "stranger.json")
	args := []string{"--data-dir", node.dir, "agent", "--role", "node", "--site", "a", "--upstream", proxy.addr(), "--trust", "stranger.json", "--admin", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"}
	e.fails(2, "is neither in its chain nor its successor", args...)
	cmd := exec.Command(patchctlBin, append(args, "--reset-trust")...)
	cmd.Dir = e.dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(node.dir, agentInfoFile))
		var info AgentInfo
		if err == nil && json.Unmarshal(b, &info) == nil && info.PID == cmd.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent told to reset its trust did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
