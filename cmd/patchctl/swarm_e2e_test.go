package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchctl/patchctl/testnet/packgen"
)

// serve starts `patchctl serve` on loopback with dataDir and returns the
// first address it prints; the process is killed when the test ends.
func (e *env) serve(dataDir string, args ...string) string {
	e.t.Helper()
	args = append([]string{"--data-dir", dataDir, "serve", "--listen", "/ip4/127.0.0.1/tcp/0"}, args...)
	cmd := exec.Command(patchctlBin, args...)
	cmd.Dir = e.dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case addr, ok := <-lines:
		if !ok || !strings.Contains(addr, "/p2p/") {
			e.t.Fatalf("serve printed %q, want a multiaddr with /p2p/", addr)
		}
		return addr
	case <-time.After(30 * time.Second):
		e.t.Fatal("serve printed no address within 30 s")
	}
	return ""
}

type fetchJSON struct {
	ChunksTotal   int              `json:"chunks_total"`
	ChunksPresent int              `json:"chunks_present"`
	ChunksFetched int              `json:"chunks_fetched"`
	BytesFetched  int64            `json:"bytes_fetched"`
	Seconds       float64          `json:"seconds"`
	Peers         map[string]int64 `json:"peer_bytes"`
}

func decodeFetch(t *testing.T, out string) fetchJSON {
	t.Helper()
	var f fetchJSON
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("fetch --json printed %q: %v", out, err)
	}
	return f
}

func TestServeAndFetchOnTwoTerminals(t *testing.T) {
	e := newEnv(t)
	p := e.publish("--name", "HF-S041000005-012", "pack")
	addr := e.serve(e.data)
	other := filepath.Join(e.dir, "other")
	r := e.patchctl("--data-dir", other, "--json", "fetch", "--trust", "trust.json", "--peer", addr,
		"--listen", "/ip4/127.0.0.1/tcp/0", "--extract", "out", "HF-S041000005-012")
	if r.code != 0 {
		t.Fatalf("fetch: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	f := decodeFetch(t, r.stdout)
	if f.ChunksTotal != p.Chunks || f.ChunksPresent != 0 || f.ChunksFetched != p.Chunks || f.BytesFetched < p.StoredBytes {
		t.Fatalf("fetch summary %+v after publishing %+v", f, p)
	}
	sameTree(t, filepath.Join(e.dir, "pack"), filepath.Join(e.dir, "out"))
	e.ok("--data-dir", other, "verify", "--trust", "trust.json", "HF-S041000005-012")
	// The fetcher now holds the release and serves it in turn, by CID too.
	addr2 := e.serve(other)
	third := filepath.Join(e.dir, "third")
	e.ok("--data-dir", third, "fetch", "--trust", "trust.json", "--peer", addr2, "--listen", "/ip4/127.0.0.1/tcp/0", p.CID)
	// A trust root that does not know the publisher refuses the envelope.
	e.ok("key", "generate", "--out", "stranger")
	e.ok("trust", "init", "--key", "stranger.key", "--out", "stranger.json")
	e.fails(1, "no key of the trust root", "--data-dir", filepath.Join(e.dir, "fourth"), "fetch", "--trust", "stranger.json",
		"--peer", addr, "--listen", "/ip4/127.0.0.1/tcp/0", "HF-S041000005-012")
	e.fails(3, "not found", "--data-dir", filepath.Join(e.dir, "fourth"), "fetch", "--trust", "trust.json",
		"--peer", addr, "--listen", "/ip4/127.0.0.1/tcp/0", "SP-S041000099")
}

// TestFetchKilledHalfwayResumes kills a fetch with SIGKILL while chunks
// arrive, then runs it again: the second run fetches only what the first did
// not store.
func TestFetchKilledHalfwayResumes(t *testing.T) {
	e := newEnv(t)
	writeGenerated(t, filepath.Join(e.dir, "big", "pack.bin"), 9, 8<<20, packgen.Incompressible)
	p := e.publish("--name", "SP-S041000005", "big")
	// 2 MB/s: the 8 MiB pack takes about 4 s, time to kill it halfway.
	addr := e.serve(e.data, "--max-upload-rate", "2000000")
	other := filepath.Join(e.dir, "other")
	args := []string{"--data-dir", other, "--json", "fetch", "--trust", "trust.json", "--peer", addr, "--listen", "/ip4/127.0.0.1/tcp/0", "SP-S041000005"}
	cmd := exec.Command(patchctlBin, args...)
	cmd.Dir = e.dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for packBytes(other) < p.StoredBytes/3 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the fetch stored %d of %d bytes in 30 s", packBytes(other), p.StoredBytes)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	stored := storedChunksIn(t, other)
	if len(stored) >= p.Chunks {
		t.Fatalf("the fetch finished before it was killed")
	}
	f := decodeFetch(t, e.ok(args...))
	t.Logf("killed after %d of %d chunks; the second run found %d and fetched %d", len(stored), p.Chunks, f.ChunksPresent, f.ChunksFetched)
	if f.ChunksPresent < len(stored) || f.ChunksPresent+f.ChunksFetched != f.ChunksTotal || f.ChunksTotal != p.Chunks {
		t.Fatalf("resume: %+v with %d chunks stored before", f, len(stored))
	}
	e.ok("--data-dir", other, "verify", "--trust", "trust.json", "SP-S041000005")
}

func TestClosedSwarms(t *testing.T) {
	e := newEnv(t)
	e.publish("--name", "HF-S041000005-012", "pack")
	e.ok("key", "network", "--out", "swarm.key")
	e.ok("key", "network", "--out", "other.key")
	fetch := func(dataDir string, args ...string) []string {
		return append([]string{"--data-dir", filepath.Join(e.dir, dataDir), "fetch", "--trust", "trust.json",
			"--listen", "/ip4/127.0.0.1/tcp/0", "--stall-timeout", "3s"}, append(args, "HF-S041000005-012")...)
	}
	addr := e.serve(e.data, "--network-key", "swarm.key")
	e.fails(4, "", fetch("wrong-key", "--network-key", "other.key", "--peer", addr)...)
	e.fails(4, "", fetch("no-key", "--peer", addr)...)
	e.ok(fetch("same-key", "--network-key", "swarm.key", "--peer", addr)...)

	// An allowlist admits the peers it names and no one else.
	friend := strings.TrimSpace(e.ok("--data-dir", filepath.Join(e.dir, "friend"), "id"))
	data2 := filepath.Join(e.dir, "data2")
	e.ok("--data-dir", data2, "fetch", "--trust", "trust.json", "--listen", "/ip4/127.0.0.1/tcp/0", "--network-key", "swarm.key", "--peer", addr, "HF-S041000005-012")
	guarded := e.serve(data2, "--allow", friend)
	e.fails(4, "", fetch("stranger", "--peer", guarded)...)
	e.ok(fetch("friend", "--peer", guarded)...)
}
