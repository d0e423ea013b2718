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
