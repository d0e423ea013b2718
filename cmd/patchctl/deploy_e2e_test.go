package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Deploys run at once by several operators all end up in the index: the
// origin adopts one index per version and answers the others with a
// conflict, on which deploy signs again on the fresh index.
func TestDeploysRunAtOnceAllEndUpInTheIndex(t *testing.T) {
	e := newEnv(t)
	origin := e.startAgent("origin", "--role", "origin")
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000005",
		"--origin", origin.info.Admin, "--admin-token", origin.token(), "pack")
	const deploys = 6
	var wg sync.WaitGroup
	out := make([]string, deploys)
	failed := make([]error, deploys)
	for i := range deploys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(patchctlBin, "deploy", "--origin", origin.info.Admin, "--admin-token", origin.token(),
				"--key", "release.key", "--to", fmt.Sprintf("site=s%d", i), "SP-S041000005")
			cmd.Dir = e.dir
			cmd.Env = append(os.Environ(), "PATCHCTL_DATA_DIR="+e.data)
			b, err := cmd.CombinedOutput()
			out[i], failed[i] = string(b), err
		}()
	}
	wg.Wait()
	for i := range deploys {
		if failed[i] != nil {
			t.Errorf("deploy to s%d: %v: %s", i, failed[i], out[i])
		}
	}
	var env []byte
	if err := origin.getRaw("/v1/index", &env); err != nil {
		t.Fatal(err)
	}
	root, err := loadTrust(e.dir + "/trust.json")
	if err != nil {
		t.Fatal(err)
	}
	ix, err := root.VerifyIndex(env, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, d := range ix.Deployments {
		got[d.Selector] = true
	}
	for i := range deploys {
		if !got[fmt.Sprintf("site=s%d", i)] {
			t.Errorf("the deployment to s%d is not in the origin's index version %d: %v", i, ix.Version, ix.Deployments)
		}
	}
	if len(ix.Deployments) != deploys {
		t.Errorf("index version %d holds %d deployments, want %d", ix.Version, len(ix.Deployments), deploys)
	}
}

// rm and gc at the origin keep what its signed index lists: nodes may still
// fetch any of it.
func TestTheOriginKeepsEveryReleaseItsIndexLists(t *testing.T) {
	e := newEnv(t)
	origin := e.startAgent("origin", "--role", "origin")
	e.ok("--data-dir", "release", "publish", "--key", "release.key", "--name", "SP-S041000005",
		"--origin", origin.info.Admin, "--admin-token", origin.token(), "pack")
	e.fails(5, "withdraw it first", "--data-dir", origin.dir, "rm", "SP-S041000005")
	// A pin lost by other means is restored before gc collects.
	if err := os.Remove(filepath.Join(origin.dir, "pins", "SP-S041000005")); err != nil {
		t.Fatal(err)
	}
	if out := e.ok("--data-dir", origin.dir, "gc", "--grace", "0s"); !strings.Contains(out, "pinned SP-S041000005 again") {
		t.Errorf("gc printed %q", out)
	}
	e.ok("--data-dir", origin.dir, "verify", "--trust", "trust.json", "SP-S041000005")
}

// An index about to expire is warned of; an expired one is renewed from
// another machine, even across a restart of the origin, and the version
// goes on from the expired one.
func TestAnExpiringIndexIsWarnedOfAndRenewedFromAnotherMachine(t *testing.T) {
	e := newEnv(t)
	origin := e.startAgent("origin", "--role", "origin")
	admin := []string{"--origin", origin.info.Admin, "--admin-token", origin.token(), "--key", "release.key"}
	e.ok(append([]string{"--data-dir", "release", "publish", "--name", "SP-S041000005", "pack"}, admin...)...)
	e.ok(append([]string{"deploy", "--lifetime", "8s", "SP-S041000005"}, admin...)...)
	warned := func(want string) func() (bool, string) {
		return func() (bool, string) {
			r := e.patchctl("status", "--origin", origin.info.Admin)
			return strings.Contains(r.stderr, want), r.stderr
		}
	}
	waitFor(t, "status warns of the index about to expire", warned("expires in"))
	waitFor(t, "status says the index expired", warned("expired at"))
	var h struct {
		IndexVersion uint64   `json:"index_version"`
		Warnings     []string `json:"warnings"`
	}
	if err := origin.getJSON("/v1/health", &h); err != nil || len(h.Warnings) != 1 || h.IndexVersion != 2 {
		t.Errorf("health %+v (%v), want index version 2 with a warning", h, err)
	}
	origin.stop()
	origin.start()
	admin[1] = origin.info.Admin // its port is new
	out := e.ok(append([]string{"index", "renew"}, admin...)...)
	if !strings.Contains(out, "index version 3") {
		t.Errorf("renew printed %q, want version 3, built on the expired version 2", out)
	}
	if r := e.patchctl("status", "--origin", origin.info.Admin); r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "SP-S041000005") {
		t.Errorf("status after the renewal: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}
