package main

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These benchmarks run the real binary as users do, with data dirs on a
// real disk, and name the file system each ran on. PATCHCTL_BENCH_TAR_MIB
// sets the size of the software tar (512 by default); PATCHCTL_BENCH_BASELINE
// names another patchctl binary (an older build) to run beside this one in
// the same run, so its figures are measured under the same load.

// Magic numbers of statfs(2), for the file systems these benchmarks meet.
var fsNames = map[int64]string{0xEF53: "ext4", 0x01021994: "tmpfs", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x794c7630: "overlay"}

// fsName is the name of the file system dir is on.
func fsName(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	if n, ok := fsNames[int64(st.Type)]; ok {
		return n
	}
	return fmt.Sprintf("fs%x", st.Type)
}

// softwareTar returns a tar of a software tree with many small files, made
// once and kept in the temporary directory: the Go installation, then the
// system's library tree, regular files in lexical order, cut at size.
func softwareTar(b *testing.B, size int64) string {
	b.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("patchctl-bench-software-%d.tar", size))
	if fi, err := os.Stat(path); err == nil && fi.Size() >= size {
		return path
	}
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cw := &countingWriter{w: bufio.NewWriterSize(f, 1<<20)}
	tw := tar.NewWriter(cw)
	full := errors.New("full")
	for _, root := range []struct{ dir, prefix string }{{strings.TrimSpace(string(goroot)), "go"}, {"/usr/lib", "lib"}} {
		err := filepath.WalkDir(root.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil // unreadable entries and everything but files are passed over
			}
			if cw.n >= size {
				return full
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			src, err := os.Open(p)
			if err != nil {
				return nil
			}
			defer src.Close()
			rel, _ := filepath.Rel(root.dir, p)
			hdr, _ := tar.FileInfoHeader(fi, "")
			hdr.Name, hdr.Uname, hdr.Gname = root.prefix+"/"+rel, "", ""
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			_, err = io.CopyN(tw, src, fi.Size())
			return err
		})
		if errors.Is(err, full) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		b.Fatal(err)
	}
	return path
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// tarSize is the software tar's size from PATCHCTL_BENCH_TAR_MIB.
func tarSize(b *testing.B) int64 {
	mib := int64(512)
	if v := os.Getenv("PATCHCTL_BENCH_TAR_MIB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("PATCHCTL_BENCH_TAR_MIB=%q: want a positive number", v)
		}
		mib = n
	}
	return mib << 20
}

// binaries are this build and, if PATCHCTL_BENCH_BASELINE names one, the
// baseline, by the name their figures carry.
func binaries() []struct{ name, path string } {
	bins := []struct{ name, path string }{{"this", patchctlBin}}
	if p := os.Getenv("PATCHCTL_BENCH_BASELINE"); p != "" {
		bins = append(bins, struct{ name, path string }{"baseline", p})
	}
	return bins
}

// diskUse is what the files under dir take on disk (du -sk) and hold
// (du -sb), and how many there are.
func diskUse(dir string) (blocks, bytes int64, files int) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		files++
		bytes += fi.Size()
		blocks += fi.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	return blocks, bytes, files
}

// cpu is a finished process's user and system CPU time.
func cpu(cmd *exec.Cmd) (user, sys float64) {
	return cmd.ProcessState.UserTime().Seconds(), cmd.ProcessState.SystemTime().Seconds()
}

// BenchmarkPublishSoftwareTar publishes the software tar into a data dir on
// the temporary directory's file system, and reports CPU-seconds (user and
// system), wall time, the wall time of `zstd -3 -T1` on the same file, and
// disk blocks ÷ bytes of the data dir; with a baseline, the same for it.
func BenchmarkPublishSoftwareTar(b *testing.B) {
	size := tarSize(b)
	src := softwareTar(b, size)
	dir := b.TempDir()
	key := filepath.Join(dir, "k")
	if out, err := exec.Command(patchctlBin, "key", "generate", "--out", key).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	for _, bin := range binaries() {
		b.Run(fmt.Sprintf("%s/%s/%dMiB", bin.name, fsName(dir), size>>20), func(b *testing.B) {
			var wall, user, sys, zstdWall float64
			var blocks, bytes int64
			var files int
			for b.Loop() {
				data := filepath.Join(b.TempDir(), "data")
				cmd := exec.Command(bin.path, "--data-dir", data, "publish", "--json", "--key", key+".key", "--name", "SP-S041000005", src)
				start := time.Now()
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				wall = time.Since(start).Seconds()
				user, sys = cpu(cmd)
				blocks, bytes, files = diskUse(data)
				z := exec.Command("zstd", "-3", "-T1", "-q", "-f", "-o", filepath.Join(b.TempDir(), "z.zst"), src)
				start = time.Now()
				if out, err := z.CombinedOutput(); err != nil {
					b.Logf("zstd: %v: %s", err, out)
				}
				zstdWall = time.Since(start).Seconds()
			}
			b.ReportMetric(user+sys, "cpu_s")
			b.ReportMetric(sys, "sys_s")
			b.ReportMetric(wall, "wall_s")
			b.ReportMetric(wall/zstdWall, "wall÷zstd")
			b.ReportMetric(float64(blocks)/float64(bytes), "blocks÷bytes")
			b.ReportMetric(float64(files), "files")
		})
	}
}

// BenchmarkSwarmOneSeedEightFetchers serves the software tar from one
// `patchctl serve` process and fetches it with eight `patchctl fetch`
// processes at once, every data dir on one file system: the temporary
// directory's (a real disk) and /dev/shm (tmpfs), in the same run. It
// reports the wall time to the last fetcher, and what each fetcher wrote to
// the disk (the median) per byte of the release.
func BenchmarkSwarmOneSeedEightFetchers(b *testing.B) {
	const fetchers = 8
	size := tarSize(b)
	src := softwareTar(b, size)
	roots := []string{os.TempDir()}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		roots = append(roots, "/dev/shm")
	}
	for _, bin := range binaries() {
		for _, root := range roots {
			b.Run(fmt.Sprintf("%s/%s/%dMiB", bin.name, fsName(root), size>>20), func(b *testing.B) {
				dir, err := os.MkdirTemp(root, "patchctl-bench-swarm-")
				if err != nil {
					b.Fatal(err)
				}
				defer os.RemoveAll(dir)
				run := func(args ...string) {
					if out, err := exec.Command(bin.path, args...).CombinedOutput(); err != nil {
						b.Fatalf("patchctl %v: %v: %s", args, err, out)
					}
				}
				key, trust := filepath.Join(dir, "k"), filepath.Join(dir, "trust.json")
				run("key", "generate", "--out", key)
				run("trust", "init", "--key", key+".key", "--out", trust)
				seed := filepath.Join(dir, "seed")
				run("--data-dir", seed, "publish", "--key", key+".key", "--name", "SP-S041000005", src)
				addr := benchServe(b, bin.path, seed)
				var wall, written float64
				for i := 0; b.Loop(); i++ {
					var wg sync.WaitGroup
					writes := make([]float64, fetchers)
					errs := make([]error, fetchers)
					start := time.Now()
					for f := range fetchers {
						wg.Go(func() {
							data := filepath.Join(dir, fmt.Sprintf("run%d-fetcher%d", i, f))
							defer os.RemoveAll(data)
							cmd := exec.Command(bin.path, "--data-dir", data, "fetch", "--trust", trust,
								"--peer", addr, "--listen", "/ip4/127.0.0.1/tcp/0", "SP-S041000005")
							if out, err := cmd.CombinedOutput(); err != nil {
								errs[f] = fmt.Errorf("fetcher %d: %v: %s", f, err, out)
								return
							}
							// ru_oublock counts 512-byte blocks the process
							// caused to be written.
							writes[f] = float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Oublock) * 512
						})
					}
					wg.Wait()
					wall = time.Since(start).Seconds()
					if err := errors.Join(errs...); err != nil {
						b.Fatal(err)
					}
					slices.Sort(writes)
					written = writes[fetchers/2] / float64(size)
				}
				b.ReportMetric(wall, "wall_s")
				b.ReportMetric(written, "written÷size")
			})
		}
	}
}
