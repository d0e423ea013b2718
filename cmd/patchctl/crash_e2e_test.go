package main

import (
	"encoding/json"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchctl/patchctl/testnet/packgen"
)

// killRounds is how many times each command is killed.
const killRounds = 20

// killAtRandom runs patchctl args killRounds times, each killed with
// SIGKILL at a random moment within how long a whole run takes, and calls
// after once each has died. The moments are drawn from a seed the test
// logs.
func killAtRandom(t *testing.T, e *env, whole time.Duration, args []string, after func(round int)) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("kill moments from seed %d, within %s", seed, whole)
	rng := rand.New(rand.NewPCG(seed, 0))
	for round := range killRounds {
		cmd := exec.Command(patchctlBin, args...)
		cmd.Dir = e.dir
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(whole))))
		cmd.Process.Kill()
		cmd.Wait()
		after(round)
	}
}

// Publish and fetch are killed with SIGKILL at 20 random moments each, on
// the same data dir: after every kill the store opens and fsck finds no
// chunk corrupt or missing, and the command run again to its end gives a
// release that verifies, having kept what the killed runs stored.
func TestPublishAndFetchKilledAtRandomMomentsLoseNothing(t *testing.T) {
	e := newEnv(t)
	writeGenerated(t, filepath.Join(e.dir, "big", "tree.bin"), 11, 6<<20, packgen.Software)
	writeGenerated(t, filepath.Join(e.dir, "big", "data.bin"), 12, 2<<20, packgen.Incompressible)

	start := time.Now()
	full := e.publish("--name", "SP-S041000005", "big")
	whole := time.Since(start)
	pub := filepath.Join(e.dir, "pub")
	publish := []string{"--data-dir", pub, "publish", "--json", "--key", "release.key", "--name", "SP-S041000005", "big"}
	killAtRandom(t, e, whole, publish, func(round int) {
		if r := e.patchctl("--data-dir", pub, "fsck"); r.code != 0 && r.code != 3 {
			t.Fatalf("publish killed, round %d: fsck exit %d: %s%s", round, r.code, r.stdout, r.stderr)
		}
	})
	var p publishJSON
	if err := json.Unmarshal([]byte(e.ok(publish...)), &p); err != nil {
		t.Fatal(err)
	}
	if p.Chunks != full.Chunks || len(storedChunksIn(t, pub)) != full.Chunks {
		t.Errorf("publish after the kills: %d chunks, %d stored, want %d", p.Chunks, len(storedChunksIn(t, pub)), full.Chunks)
	}
	e.ok("--data-dir", pub, "verify", "--trust", "trust.json", "SP-S041000005")
	e.ok("--data-dir", pub, "fsck")

	// 4 MB/s: a whole fetch takes about two seconds; the kills come
	// within the first 600 ms, each run resuming from the last.
	addr := e.serve(e.data, "--max-upload-rate", "4000000")
	got := filepath.Join(e.dir, "got")
	fetch := []string{"--data-dir", got, "--json", "fetch", "--trust", "trust.json", "--peer", addr, "--listen", "/ip4/127.0.0.1/tcp/0", "SP-S041000005"}
	stored := 0
	killAtRandom(t, e, 600*time.Millisecond, fetch, func(round int) {
		if r := e.patchctl("--data-dir", got, "fsck"); r.code != 0 && r.code != 3 {
			t.Fatalf("fetch killed, round %d: fsck exit %d: %s%s", round, r.code, r.stdout, r.stderr)
		}
		if n := len(storedChunksIn(t, got)); n >= stored {
			stored = n
		} else {
			t.Fatalf("fetch killed, round %d: %d chunks stored, %d before", round, n, stored)
		}
	})
	f := decodeFetch(t, e.ok(fetch...))
	if f.ChunksPresent != stored || f.ChunksPresent+f.ChunksFetched != full.Chunks {
		t.Errorf("fetch after the kills: %d chunks present and %d fetched, want the %d stored before and the rest of %d", f.ChunksPresent, f.ChunksFetched, stored, full.Chunks)
	}
	t.Logf("the killed fetches stored %d of %d chunks", stored, full.Chunks)
	e.ok("--data-dir", got, "verify", "--trust", "trust.json", "SP-S041000005")
	e.ok("--data-dir", got, "fsck")
}
