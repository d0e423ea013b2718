package store_test

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

// The benchmarks of this file put the pack store beside the file-per-chunk
// store it replaced, in the same run, in a directory under os.TempDir() (a
// real disk here); each names the file system in its name
// (docs/decisions/0035, 0041).

// benchStore is what the benchmarks need of either store.
type benchStore interface {
	store.Store
	store.Syncer
	store.FrameAppender
	Add(ctx context.Context, data []byte) (store.Added, error)
}

var benchKinds = []string{"files", "packs"}

// openBench opens a store of kind in dir; close releases it.
func openBench(b *testing.B, kind, dir string) (s benchStore, add func(context.Context, []byte) (store.Added, error), commit func(context.Context) error, close func()) {
	b.Helper()
	switch kind {
	case "files":
		f, err := store.OpenFileStore(dir)
		if err != nil {
			b.Fatal(err)
		}
		batch := f.NewBatch()
		return f, batch.Add, batch.Commit, func() {}
	default:
		d, err := store.OpenDisk(dir)
		if err != nil {
			b.Fatal(err)
		}
		batch := d.NewBatch()
		return d, batch.Add, batch.Commit, func() { d.Close() }
	}
}

// fsType names the file system dir is on, from /proc/mounts.
func fsType(dir string) string {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	best, typ := -1, "unknown"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		mnt := fields[1]
		if (dir == mnt || strings.HasPrefix(dir, strings.TrimSuffix(mnt, "/")+"/")) && len(mnt) > best {
			best, typ = len(mnt), fields[2]
		}
	}
	return typ
}

// benchDir is a fresh directory under os.TempDir(), and its file system.
func benchDir(b *testing.B) (string, string) {
	dir := b.TempDir()
	return dir, fsType(dir)
}

func rusage() (user, sys time.Duration) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// diskUsage returns the blocks (as bytes) and the sizes of the files under
// dir.
func diskUsage(dir string) (blocks, size int64) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil {
			blocks += st.Blocks * 512
			size += st.Size
		}
		return nil
	})
	return blocks, size
}

// cutChunks cuts data into chunks of sizes drawn from [lo, hi].
func cutChunks(data []byte, lo, hi int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	var cs [][]byte
	for len(data) >= hi {
		n := lo + r.IntN(hi-lo+1)
		cs = append(cs, data[:n])
		data = data[n:]
	}
	return cs
}

// storeChunks are the workloads: a tar of small files cuts into many chunks
// of 16-64 KiB, large files into chunks of 256 KiB.
func storeChunks() map[string][][]byte {
	return map[string][][]byte{
		"small": cutChunks(software(), 16<<10, 64<<10),
		"large": chunks(software(), 256<<10),
	}
}

func chunks(data []byte, n int) [][]byte {
	var cs [][]byte
	for len(data) >= n {
		cs = append(cs, data[:n])
		data = data[n:]
	}
	return cs
}

// cpuMetrics reports the CPU time a benchmark's timed part used.
type cpuMetrics struct{ user, sys time.Duration }

func (c *cpuMetrics) measure(f func()) {
	u0, s0 := rusage()
	f()
	u1, s1 := rusage()
	c.user += u1 - u0
	c.sys += s1 - s0
}

func (c *cpuMetrics) report(b *testing.B) {
	b.ReportMetric(c.user.Seconds()/float64(b.N), "user-s/op")
	b.ReportMetric(c.sys.Seconds()/float64(b.N), "sys-s/op")
}

// BenchmarkStorePublish adds every chunk of a workload through a Batch, 16
// adders at a time, then commits and syncs, as agent.Publish does: CPU,
// wall, and the disk blocks the store takes over the bytes it holds.
func BenchmarkStorePublish(b *testing.B) {
	for name, cs := range storeChunks() {
		var total int64
		for _, c := range cs {
			total += int64(len(c))
		}
		for _, kind := range benchKinds {
			parent, fsys := benchDir(b)
			b.Run(fmt.Sprintf("%s/%s/%s", fsys, kind, name), func(b *testing.B) {
				b.SetBytes(total)
				var cpu cpuMetrics
				var ratio float64
				i := 0
				for b.Loop() {
					b.StopTimer()
					dir := filepath.Join(parent, fmt.Sprint(i))
					i++
					s, add, commit, closeStore := openBench(b, kind, dir)
					b.StartTimer()
					cpu.measure(func() {
						var g errgroup.Group
						g.SetLimit(16)
						for _, c := range cs {
							g.Go(func() error {
								_, err := add(b.Context(), c)
								return err
							})
						}
						if err := g.Wait(); err != nil {
							b.Fatal(err)
						}
						if err := commit(b.Context()); err != nil {
							b.Fatal(err)
						}
						if err := s.Sync(b.Context()); err != nil {
							b.Fatal(err)
						}
					})
					b.StopTimer()
					closeStore()
					blocks, size := diskUsage(dir)
					ratio = float64(blocks) / float64(size)
					os.RemoveAll(dir)
					b.StartTimer()
				}
				cpu.report(b)
				b.ReportMetric(ratio, "blocks/bytes")
			})
		}
	}
}

// BenchmarkStoreFetch stores received frames with PutFrame from 32
// writers, then syncs, as p2p.Fetch does.
func BenchmarkStoreFetch(b *testing.B) {
	cs := storeChunks()["small"]
	frames := make([][]byte, len(cs))
	var total int64
	for i, c := range cs {
		frames[i] = store.EncodeFrame(nil, c)
		total += int64(len(frames[i]))
	}
	for _, kind := range benchKinds {
		parent, fsys := benchDir(b)
		b.Run(fmt.Sprintf("%s/%s", fsys, kind), func(b *testing.B) {
			b.SetBytes(total)
			var cpu cpuMetrics
			i := 0
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(parent, fmt.Sprint(i))
				i++
				s, _, _, closeStore := openBench(b, kind, dir)
				b.StartTimer()
				cpu.measure(func() {
					var g errgroup.Group
					g.SetLimit(32)
					for j, f := range frames {
						g.Go(func() error {
							id := manifest.ChunkID(cs[j])
							if ok, err := s.Has(b.Context(), id); ok || err != nil {
								return err
							}
							return s.PutFrame(b.Context(), id, f)
						})
					}
					if err := g.Wait(); err != nil {
						b.Fatal(err)
					}
					if err := s.Sync(b.Context()); err != nil {
						b.Fatal(err)
					}
				})
				b.StopTimer()
				closeStore()
				os.RemoveAll(dir)
				b.StartTimer()
			}
			cpu.report(b)
		})
	}
}

// BenchmarkStoreRead reads every chunk of a store of small chunks in a
// random order: frames as served to peers (AppendFrame into one buffer), and
// verified content (Get). MB/s counts stored bytes for frames and content
// bytes for Get; the page cache is warm, as on a server.
func BenchmarkStoreRead(b *testing.B) {
	cs := storeChunks()["small"]
	ids := make([]cid.Cid, len(cs))
	var content int64
	for i, c := range cs {
		ids[i] = manifest.ChunkID(c)
		content += int64(len(c))
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for _, kind := range benchKinds {
		dir, fsys := benchDir(b)
		s, add, commit, closeStore := openBench(b, kind, dir)
		for _, c := range cs {
			if _, err := add(b.Context(), c); err != nil {
				b.Fatal(err)
			}
		}
		if err := commit(b.Context()); err != nil {
			b.Fatal(err)
		}
		var stored int64
		for _, id := range ids {
			info, _ := s.Stat(b.Context(), id)
			stored += info.StoredSize
		}
		b.Run(fmt.Sprintf("%s/%s/frame", fsys, kind), func(b *testing.B) {
			b.SetBytes(stored)
			buf := make([]byte, 0, 1<<20)
			for b.Loop() {
				for _, id := range ids {
					var err error
					if buf, err = s.AppendFrame(b.Context(), id, buf[:0]); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fmt.Sprintf("%s/%s/verified", fsys, kind), func(b *testing.B) {
			b.SetBytes(content)
			for b.Loop() {
				for _, id := range ids {
					if _, err := s.Get(b.Context(), id); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		closeStore()
	}
}

// gcReleases are eight releases of 32 MiB, half software and half
// incompressible, in chunks of 16-64 KiB; each shares a quarter of its
// chunks with the one before.
func gcReleases() [][][]byte {
	base := cutChunks(append(storetest.Random(9, 16<<20), software()[:16<<20]...), 16<<10, 64<<10)
	rels := make([][][]byte, 8)
	for r := range rels {
		for i, c := range base {
			if r > 0 && i < len(base)/4 {
				rels[r] = append(rels[r], rels[r-1][len(base)-len(base)/4+i])
				continue
			}
			rels[r] = append(rels[r], append([]byte(fmt.Sprintf("%d/%d ", r, i)), c...))
		}
	}
	return rels
}

// BenchmarkStoreGC publishes eight releases (gcReleases), pins them all,
// unpins every other one and runs GC: its time, and the disk space it gave
// back, in MB and as a share of the stored bytes of the chunks it deleted.
// Packs of 16 MiB show what a finer pack size would change.
func BenchmarkStoreGC(b *testing.B) {
	rels := gcReleases()
	for _, kind := range []string{"files", "packs", "packs-16MiB"} {
		parent, fsys := benchDir(b)
		b.Run(fmt.Sprintf("%s/%s", fsys, kind), func(b *testing.B) {
			var reclaimed, share float64
			i := 0
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(parent, fmt.Sprint(i))
				i++
				var s benchStore
				var add func(context.Context, []byte) (store.Added, error)
				var commit func(context.Context) error
				closeStore := func() {}
				if kind == "packs-16MiB" {
					d, err := store.OpenDiskWith(dir, store.DiskOptions{PackSize: 16 << 20})
					if err != nil {
						b.Fatal(err)
					}
					batch := d.NewBatch()
					s, add, commit, closeStore = d, batch.Add, batch.Commit, func() { d.Close() }
				} else {
					s, add, commit, closeStore = openBench(b, kind, dir)
				}
				for r, cs := range rels {
					pin := make([]cid.Cid, len(cs))
					var g errgroup.Group
					g.SetLimit(16)
					for j, c := range cs {
						g.Go(func() error {
							a, err := add(b.Context(), c)
							pin[j] = a.ID
							return err
						})
					}
					if err := g.Wait(); err != nil {
						b.Fatal(err)
					}
					if err := commit(b.Context()); err != nil {
						b.Fatal(err)
					}
					if err := s.Sync(b.Context()); err != nil {
						b.Fatal(err)
					}
					if err := s.Pin(b.Context(), fmt.Sprintf("HF-S041000005-%03d", r), pin); err != nil {
						b.Fatal(err)
					}
				}
				for r := 0; r < len(rels); r += 2 {
					if err := s.Unpin(b.Context(), fmt.Sprintf("HF-S041000005-%03d", r)); err != nil {
						b.Fatal(err)
					}
				}
				before, _ := diskUsage(dir)
				b.StartTimer()
				res, err := store.GC(b.Context(), s, store.GCOptions{Now: time.Now().Add(time.Second)})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				after, _ := diskUsage(dir)
				reclaimed = float64(before-after) / 1e6
				share = float64(before-after) / float64(res.BytesFreed)
				closeStore()
				os.RemoveAll(dir)
				b.StartTimer()
			}
			b.ReportMetric(reclaimed, "MB-reclaimed")
			b.ReportMetric(share, "reclaimed/deleted")
		})
	}
}

// BenchmarkStoreOpen opens a pack store of 100,000 chunks (sealed packs and
// an active one), writable and read-only, the index it rebuilds counted in
// heap MB.
func BenchmarkStoreOpen(b *testing.B) {
	const n = 100_000
	dir, fsys := benchDir(b)
	d, err := store.OpenDisk(dir)
	if err != nil {
		b.Fatal(err)
	}
	batch := d.NewBatch()
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := range n {
		g.Go(func() error {
			_, err := batch.Add(b.Context(), storetest.Random(uint64(i), 2<<10+i%(2<<10)))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	if err := batch.Commit(b.Context()); err != nil {
		b.Fatal(err)
	}
	packs, _, _ := d.PackStats()
	d.Close()
	opens := []struct {
		name string
		open func(string) (*store.Disk, error)
	}{
		{"", store.OpenDisk},
		{"/read-only", store.OpenDiskReadOnly},
	}
	for _, o := range opens {
		b.Run(fmt.Sprintf("%s/packs/%d%s", fsys, n, o.name), func(b *testing.B) {
			var heap float64
			for b.Loop() {
				runtime.GC()
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				d, err := o.open(dir)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&m1)
				heap = float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / 1e6
				var listed int
				d.List(b.Context(), func(cid.Cid) error { listed++; return nil })
				if listed != n {
					b.Fatalf("%d chunks after open, want %d", listed, n)
				}
				d.Close()
				b.StartTimer()
			}
			b.ReportMetric(heap, "heap-MB")
			b.ReportMetric(float64(packs), "packs")
		})
	}
}
