package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/patchctl/patchctl/testnet/packgen"
)

// BenchmarkPublishPeakRSS4GiB runs the real binary on a 4 GiB software-like
// file and reports the process's peak resident memory, which must stay under
// 128 MiB whatever the pack size.
func BenchmarkPublishPeakRSS4GiB(b *testing.B) {
	const size = 4 << 30
	path := filepath.Join(os.TempDir(), fmt.Sprintf("patchctl-bench-%d-%d.bin", packgen.Software, int64(size)))
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		f, err := os.Create(path + ".tmp")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(f, packgen.New(42, size, packgen.Software)); err != nil {
			b.Fatal(err)
		}
		f.Close()
		if err := os.Rename(path+".tmp", path); err != nil {
			b.Fatal(err)
		}
	}
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
