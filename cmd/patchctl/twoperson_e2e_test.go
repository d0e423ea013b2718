package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// A release engineer and a second approver, each with their own key on
// their own machine (here, their own data dirs), run a fleet whose trust
// root needs both: the root, a proxy's enrolment, a release and its
// deployment are each signed by one, then the other, and the node installs.
func TestTwoKeyHoldersPublishAndDeployUnderARootOfThreshold2(t *testing.T) {
	e := newEnv(t)
	alice := []string{"--data-dir", filepath.Join(e.dir, "alice")}
	bob := []string{"--data-dir", filepath.Join(e.dir, "bob")}
	run := func(who []string, args ...string) string { t.Helper(); return e.ok(append(who, args...)...) }
	run(alice, "key", "generate", "--out", "a")
	run(bob, "key", "generate", "--out", "b")

	// The root: made by one, signed by the other.
	out := run(alice, "trust", "init", "--key", "a.key", "--pub", "b.pub", "--threshold", "2", "--out", "root.json")
	if !strings.Contains(out, "1 trusted signatures of the 2") {
		t.Errorf("trust init printed %q, want it to say one more signature is needed", out)
	}
	if out := run(bob, "sign", "--key", "b.key", "--trust", "root.json", "root.json"); !strings.Contains(out, "enough") {
		// --trust reads the root being signed: once signed it verifies.
		t.Errorf("sign printed %q", out)
	}
	origin := &agentProc{e: e, name: "origin", dir: filepath.Join(e.dir, "origin"), args: []string{"--role", "origin", "--trust", "root.json"}}
	origin.start()
	t.Cleanup(origin.stop)
	proxy := &agentProc{e: e, name: "proxy", dir: filepath.Join(e.dir, "proxy"), args: []string{"--role", "proxy", "--site", "a", "--trust", "root.json", "--upstream", origin.addr()}}
	proxy.start()
	t.Cleanup(proxy.stop)
	node := &agentProc{e: e, name: "node", dir: filepath.Join(e.dir, "node"), args: []string{"--role", "node", "--site", "a", "--target", "server", "--trust", "root.json", "--upstream", proxy.addr()}}
	node.start()
	t.Cleanup(node.stop)
	admin := []string{"--origin", origin.info.Admin, "--admin-token", origin.token(), "--trust", "root.json"}

	// One key is not enough to hand anything over, and the CLI says how.
	e.fails(2, "patchctl index push", append(append(alice, "enrol", "--key", "a.key", "--site", "a"), append(admin, proxy.info.PeerID)...)...)
	// Each index the origin takes: one signs it into a file, the other
	// signs the file, one hands it over.
	index := func(args ...string) {
		t.Helper()
		run(alice, append(append(args, admin...), "--key", "a.key", "--out", "next.json")...)
		run(bob, "sign", "--key", "b.key", "next.json")
		run(alice, "index", "push", "--origin", origin.info.Admin, "--admin-token", origin.token(), "next.json")
	}
	index("enrol", "--site", "a", proxy.info.PeerID)

	// The release: published by one, signed by the other, pushed.
	run(alice, "publish", "--key", "a.key", "--name", "SP-S041000005", "--out", "sp.json", "pack")
	run(bob, "sign", "--key", "b.key", "sp.json")
	if out := run(alice, "verify", "--trust", "root.json", "sp.json"); !strings.Contains(out, "2 trusted signatures of the 2") {
		t.Errorf("verify printed %q, want both signatures", out)
	}
	index("push", "sp.json")
	index("deploy", "SP-S041000005")
	e.waitCounts(origin, "SP-S041000005", "a 1/1/1 failed 0")
}
