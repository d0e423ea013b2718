package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patchctl/patchctl/lifecycle"
)

// smallFleet starts an origin, a proxy of site a and a node there started
// with nodeArgs, publishes the pack directory as SP-S041000005 and deploys
// it to every node.
func smallFleet(t *testing.T, e *env, node *agentProc) (origin *agentProc) {
	t.Helper()
	origin = e.startAgent("origin", "--role", "origin")
	proxy := e.startAgent("proxy", "--role", "proxy", "--site", "a", "--upstream", origin.addr())
	node.args = append([]string{"--role", "node", "--site", "a", "--target", "server", "--upstream", proxy.addr()}, node.args...)
	node.start()
	t.Cleanup(node.stop)
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000005",
		"--origin", origin.info.Admin, "--admin-token", origin.token(), "pack")
	e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "SP-S041000005")
	return origin
}

// nodeState is the node's state of SP-S041000005, and its reason.
func nodeState(p *agentProc) (string, string) { return nodeStateOf(p, "SP-S041000005") }

// nodeStateOf is the node's state of release, and its reason.
func nodeStateOf(p *agentProc, release string) (string, string) {
	var st struct {
		Deployments []struct{ Release, State, Reason string }
	}
	if err := p.getJSON("/v1/status", &st); err != nil {
		return "", err.Error()
	}
	for _, d := range st.Deployments {
		if d.Release == release {
			return d.State, d.Reason
		}
	}
	return "", fmt.Sprint(st.Deployments)
}

// alive reports whether process pid lives (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestAHookThatTimesOutIsKilledWithEveryProcessItStarted(t *testing.T) {
	e := newEnv(t)
	child := filepath.Join(e.dir, "child.pid")
	hook := fmt.Sprintf("(sleep 60; echo late > %s.late) & echo $! > %s; sleep 60", child, child)
	node := &agentProc{e: e, name: "node", dir: filepath.Join(e.dir, "node"), args: []string{"--install-hook", hook, "--hook-timeout", "2s"}}
	smallFleet(t, e, node)
	waitFor(t, "the install times out", func() (bool, string) {
		state, reason := nodeState(node)
		return state == lifecycle.Failed && strings.Contains(reason, "timed out after 2s"), state + ": " + reason
	})
	// Gone with the hook: within the few seconds the agent gives a
	// killed hook's output to end, long before its own sleep would end.
	pid := readPID(t, child)
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the hook's background child, process %d, lives on after the hook timed out", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestARestartedAgentNeverRunsAHookBesideTheRunItsCrashLeft(t *testing.T) {
	e := newEnv(t)
	runs := filepath.Join(e.dir, "runs")
	hook := fmt.Sprintf("echo start $$ >> %s; sleep 8; echo end $$ >> %s", runs, runs)
	node := &agentProc{e: e, name: "node", dir: filepath.Join(e.dir, "node"), args: []string{"--install-hook", hook}}
	smallFleet(t, e, node)
	waitFor(t, "the hook starts", func() (bool, string) {
		b, _ := os.ReadFile(runs)
		return strings.Contains(string(b), "start"), string(b)
	})
	node.kill()
	node.start()
	waitFor(t, "the node installs after its restart", func() (bool, string) {
		state, reason := nodeState(node)
		return state == lifecycle.Installed, state + ": " + reason
	})
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
	// start A end A start B end B: each run ended before the next began.
	if len(lines) != 8 || lines[0] != "start" || lines[2] != "end" || lines[4] != "start" || lines[6] != "end" || lines[1] != lines[3] || lines[5] != lines[7] {
		t.Errorf("hook runs: %q, want the second to start after the first ended", string(b))
	}
	if !strings.Contains(node.log(), "waiting for an earlier run of its install commands") {
		t.Errorf("the restarted agent did not say it waited for the earlier run")
	}
}

func TestHooksGetAbsolutePathsWhateverTheDataDirIsCalled(t *testing.T) {
	e := newEnv(t)
	hook := `ls "$PATCH_DIR" > /dev/null && test -f "$PATCH_MANIFEST" && test -f "$PATCH_DIR/HF-S041000005-012.zip"`
	node := &agentProc{e: e, name: "node", dir: filepath.Join(e.dir, "node"), args: []string{"--install-hook", hook}, relative: true}
	smallFleet(t, e, node)
	deadline := time.Now().Add(time.Minute)
	for {
		state, reason := nodeState(node)
		if state == lifecycle.Installed {
			return
		}
		if state == lifecycle.Failed || time.Now().After(deadline) {
			t.Fatalf("install with a relative --data-dir: %s: %s", state, reason)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A retry reaches the node within seconds, not at the next poll of each
// tier (a minute here): the origin nudges its proxies, a proxy its nodes.
func TestARetryTravelsDownAtOnce(t *testing.T) {
	e := newEnv(t)
	fault := filepath.Join(e.dir, "fault")
	if err := os.WriteFile(fault, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	slow := []string{"--poll", "1m"}
	origin := e.startAgent("origin", append([]string{"--role", "origin"}, slow...)...)
	proxy := e.startAgent("proxy", append([]string{"--role", "proxy", "--site", "a", "--upstream", origin.addr()}, slow...)...)
	e.ok("enrol", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "--site", "a", proxy.info.PeerID)
	hook := fmt.Sprintf("if [ -e %s ]; then echo fault >&2; exit 3; fi", fault)
	node := e.startAgent("node", append([]string{"--role", "node", "--site", "a", "--target", "server", "--upstream", proxy.addr(), "--install-hook", hook}, slow...)...)
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000005",
		"--origin", origin.info.Admin, "--admin-token", origin.token(), "pack")
	e.ok("deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key", "SP-S041000005")
	e.waitCounts(origin, "SP-S041000005", "a 1/1/0 failed 1")
	if err := os.Remove(fault); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.ok("retry", "--origin", origin.info.Admin, "--admin-token", origin.token(), "--node", node.info.PeerID, "SP-S041000005")
	e.waitCounts(origin, "SP-S041000005", "a 1/1/1 failed 0")
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the retry took %s to be installed and reported, with a poll of a minute", took)
	}
	t.Logf("retried, installed and reported in %s with a poll of a minute", time.Since(start).Round(100*time.Millisecond))
}
