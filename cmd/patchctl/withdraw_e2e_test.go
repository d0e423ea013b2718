package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchctl/patchctl/adminapi"
	"github.com/patchctl/patchctl/lifecycle"
)

// A bad hotfix is withdrawn: a node that has not installed it stops, and
// with --uninstall the nodes that installed it run its signed uninstall
// command; the records and the fleet view say so.
func TestAWithdrawnHotfixStopsAndIsUninstalledWhereItRan(t *testing.T) {
	e := newEnv(t)
	origin := e.startAgent("origin", "--role", "origin")
	proxy := e.startAgent("proxy", "--role", "proxy", "--site", "a", "--upstream", origin.addr())
	token := []string{"--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key"}
	e.ok(append([]string{"enrol", "--site", "a", proxy.info.PeerID}, token...)...)
	var nodes []*agentProc
	for _, name := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, e.startAgent(name, "--role", "node", "--site", "a", "--target", "server", "--upstream", proxy.addr(), "--allow-release-commands"))
	}
	log := filepath.Join(e.dir, "uninstalled.log")
	e.ok(append([]string{"--data-dir", "release", "publish", "--name", "SP-S041000005", "pack"}, token...)...)
	e.ok(append([]string{"deploy", "--to", "target=server", "SP-S041000005"}, token...)...)
	e.ok(append([]string{"--data-dir", "release", "publish", "--name", "HF-S041000005-001",
		"--install-cmd", "touch hotfix.marker", "--uninstall-cmd", fmt.Sprintf("echo $PATCH_NAME >> %s", log), "pack"}, token...)...)
	// n1 and n2 install the hotfix; n3 only downloads it (available).
	e.ok(append([]string{"deploy", "--to", "node=" + nodes[0].info.PeerID, "HF-S041000005-001"}, token...)...)
	e.ok(append([]string{"deploy", "--to", "node=" + nodes[1].info.PeerID, "HF-S041000005-001"}, token...)...)
	e.ok(append([]string{"deploy", "--to", "node=" + nodes[2].info.PeerID, "--mode", "available", "HF-S041000005-001"}, token...)...)
	waitFor(t, "n1 and n2 install the hotfix and n3 has it available", func() (bool, string) {
		rs := e.releaseStatus(origin, "HF-S041000005-001")
		return counts(rs) == "a 3/3/2 failed 0" && rs.Sites[0].States[lifecycle.Downloaded] == 1, counts(rs)
	})

	out := e.ok(append([]string{"withdraw", "--uninstall", "HF-S041000005-001"}, token...)...)
	if !strings.Contains(out, "to be uninstalled") {
		t.Errorf("withdraw printed %q", out)
	}
	var rs adminapi.ReleaseStatus
	waitFor(t, "the hotfix is uninstalled on n1 and n2 and withdrawn on n3", func() (bool, string) {
		rs = e.releaseStatus(origin, "HF-S041000005-001")
		c := rs.Sites
		return rs.Withdrawn && rs.Uninstall && len(c) == 1 && c[0].Uninstalled == 2 && c[0].States[lifecycle.Withdrawn] == 1 && c[0].Installed == 0,
			fmt.Sprintf("%+v", rs)
	})
	b, err := os.ReadFile(log)
	if err != nil || strings.Count(string(b), "HF-S041000005-001") != 2 {
		t.Errorf("the uninstall command ran %q (%v), want twice", b, err)
	}
	for _, n := range nodes[:2] {
		ab := e.about(n)
		if names(ab.Installed) != "SP-S041000005" || len(ab.Retired) != 1 || ab.Retired[0].RetiredBy != "withdrawn (uninstalled)" {
			t.Errorf("%s after the uninstall: installed %q, retired %+v", n.name, names(ab.Installed), ab.Retired)
		}
		if _, err := os.Stat(filepath.Join(n.dir, "installed", "HF-S041000005-001")); !os.IsNotExist(err) {
			t.Errorf("%s keeps the uninstalled hotfix's files: %v", n.name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(nodes[2].dir, "installed", "HF-S041000005-001", "hotfix.marker")); !os.IsNotExist(err) {
		t.Errorf("n3 installed the withdrawn hotfix: %v", err)
	}
	waitFor(t, "the proxy lets the withdrawn hotfix go", func() (bool, string) {
		_, err := os.Stat(filepath.Join(proxy.dir, "pins", "HF-S041000005-001"))
		return os.IsNotExist(err), fmt.Sprint(err)
	})
	// Withdrawn, it may be removed at the origin.
	e.ok("--data-dir", origin.dir, "rm", "HF-S041000005-001")
	t.Logf("status after the withdrawal:\n%s", e.ok("status", "--origin", origin.info.Admin))
}
