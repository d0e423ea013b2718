package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAnOriginAProxyAndANodeAsProcessesInstallAnIndexedRelease(t *testing.T) {
	e := newEnv(t)
	e.publish("--name", "HF-S041000005-012", "--hook", "touch hook.marker", "pack")
	e.ok("index", "add", "--key", "release.key", "HF-S041000005-012")
	agentArgs := []string{"--trust", "trust.json", "--poll", "200ms"}
	origin := e.serve(e.data, append(agentArgs, "--role", "origin")...)
	proxyDir := filepath.Join(e.dir, "proxy")
	proxy := e.serve(proxyDir, append(agentArgs, "--role", "proxy", "--site", "branch1", "--upstream", origin, "--wan-rate", "100Mbit", "--cache-quota", "1GiB")...)
	nodeDir := filepath.Join(e.dir, "node")
	e.serve(nodeDir, append(agentArgs, "--role", "node", "--site", "branch1", "--upstream", proxy)...)

	record := filepath.Join(nodeDir, "installed", "HF-S041000005-012.json")
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(record); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not install the indexed release within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	sameTree(t, filepath.Join(e.dir, "pack"), withoutMarker(t, filepath.Join(nodeDir, "installed", "HF-S041000005-012")))
	if _, err := os.Stat(filepath.Join(proxyDir, "installed")); err == nil {
		t.Error("the proxy installed a release; proxies only cache and serve")
	}
}

// withoutMarker checks that the hook ran in dir and removes its marker, so
// the tree can be compared with the pack.
func withoutMarker(t *testing.T, dir string) string {
	t.Helper()
	marker := filepath.Join(dir, "hook.marker")
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the install hook left no marker: %v", err)
	}
	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	return dir
}
