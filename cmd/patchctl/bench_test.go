package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchctl/patchctl/testnet/packgen"
)

// softwarePack returns a software-like file of size bytes made from seed,
// made once and kept in the temporary directory.
func softwarePack(b *testing.B, seed uint64, size int64) string {
	b.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("patchctl-bench-%d-%d-%d.bin", packgen.Software, seed, size))
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return path
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, packgen.New(seed, size, packgen.Software)); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkPublishPeakRSS4GiB runs the real binary on a 4 GiB software-like
// file and reports the process's peak resident memory, which must stay under
// 128 MiB whatever the pack size.
func BenchmarkPublishPeakRSS4GiB(b *testing.B) {
	const size = 4 << 30
	path := softwarePack(b, 42, size)
	dir := b.TempDir()
	key := filepath.Join(dir, "k")
	if out, err := exec.Command(patchctlBin, "key", "generate", "--out", key).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	b.SetBytes(size)
	var rssMiB float64
	var elapsed time.Duration
	for b.Loop() {
		data := b.TempDir()
		cmd := exec.Command(patchctlBin, "--data-dir", data, "publish", "--json", "--key", key+".key", "--name", "SP-S041000005", path)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		elapsed = time.Since(start)
		rssMiB = float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
	}
	b.ReportMetric(rssMiB, "peak_rss_MiB")
	b.ReportMetric(float64(size)/elapsed.Seconds()/1e6, "publish_MB/s")
}

// BenchmarkFetchPeakRSS4GiB serves a 4 GiB software-like release from one
// `patchctl serve` process and fetches it with another, reporting the
// fetcher's peak resident memory (target: at most 128 MiB) and its rate.
func BenchmarkFetchPeakRSS4GiB(b *testing.B) {
	const size = 4 << 30
	dir := b.TempDir()
	src := softwarePack(b, 42, size)
	run := func(args ...string) []byte {
		out, err := exec.Command(patchctlBin, args...).CombinedOutput()
		if err != nil {
			b.Fatalf("patchctl %v: %v: %s", args, err, out)
		}
		return out
	}
	key := filepath.Join(dir, "k")
	run("key", "generate", "--out", key)
	run("trust", "init", "--key", key+".key", "--out", filepath.Join(dir, "trust.json"))
	seedData := filepath.Join(dir, "seed")
	run("--data-dir", seedData, "publish", "--key", key+".key", "--name", "SP-S041000005", src)

	addr := benchServe(b, patchctlBin, seedData)
	var rssMiB, rate float64
	for b.Loop() {
		data := filepath.Join(b.TempDir(), "fetcher")
		cmd := exec.Command(patchctlBin, "--data-dir", data, "--json", "fetch", "--trust", filepath.Join(dir, "trust.json"),
			"--peer", addr, "--listen", "/ip4/127.0.0.1/tcp/0", "SP-S041000005")
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("fetch: %v: %s", err, out)
		}
		var sum struct {
			BytesFetched int64   `json:"bytes_fetched"`
			Seconds      float64 `json:"seconds"`
		}
		if err := json.Unmarshal(out, &sum); err != nil {
			b.Fatal(err)
		}
		rssMiB = float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024
		rate = float64(sum.BytesFetched) / sum.Seconds / 1e6
	}
	b.ReportMetric(rssMiB, "peak_rss_MiB")
	b.ReportMetric(rate, "fetch_wire_MB/s")
}

// benchServe starts `bin serve` on loopback over dataDir and returns the
// address it prints; the process is killed when b ends.
func benchServe(b *testing.B, bin, dataDir string) string {
	b.Helper()
	serve := exec.Command(bin, "--data-dir", dataDir, "serve", "--listen", "/ip4/127.0.0.1/tcp/0")
	stdout, err := serve.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := serve.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { serve.Process.Kill(); serve.Wait() })
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(addr)
}
