package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// benchFile returns a generated file of size bytes, made once and kept in
// the temp dir across benchmark runs (its content is fixed by the seed).
func benchFile(b *testing.B, size int64, kind packgen.Kind) string {
	b.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("patchctl-bench-%d-%d.bin", kind, size))
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return path
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, packgen.New(42, size, kind)); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		b.Fatal(err)
	}
	return path
}

// goTar returns the first 128 MiB of a tar of this machine's Go
// distribution: real software, present wherever the project builds.
func goTar(b *testing.B) string {
	b.Helper()
	const size = 128 << 20
	path := filepath.Join(os.TempDir(), "patchctl-bench-goroot-128MiB.tar")
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return path
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	root := runtime.GOROOT()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || buf.Len() > size {
			return err
		}
		info, err := d.Info()
		if err != nil || !info.Mode().IsRegular() {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, _ = filepath.Rel(root, p)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	if buf.Len() < size {
		b.Skipf("the Go distribution makes only %d bytes of tar", buf.Len())
	}
	if err := os.WriteFile(path, buf.Bytes()[:size], 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}

// stageRates measures each publish stage alone, on one core, over a sample
// of the data: chunking, SHA-256 of chunks, and encoding chunks to frames.
func stageRates(b *testing.B, path string) (chunk, hash, compress float64) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	// 64 pieces of 1 MiB spread over the file: pack content varies along
	// the file, and the pipeline sees all of it.
	fi, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	const pieces, piece = 64, 1 << 20
	sample := make([]byte, 0, pieces*piece)
	for k := range int64(pieces) {
		off := k * (fi.Size() - piece) / (pieces - 1)
		n, err := f.ReadAt(sample[len(sample):len(sample)+piece], off)
		if err != nil && err != io.EOF {
			b.Fatal(err)
		}
		sample = sample[:len(sample)+n]
	}
	rate := func(fn func()) float64 {
		start := time.Now()
		fn()
		return float64(len(sample)) / time.Since(start).Seconds() / 1e6
	}
	var chunks [][]byte
	chunk = rate(func() {
		c := manifest.NewChunker(bytes.NewReader(sample), manifest.DefaultChunkParams)
		for {
			data, err := c.Next()
			if err != nil {
				break
			}
			chunks = append(chunks, data)
		}
	})
	// The chunker's slices are only valid until the next call; take copies
	// for the other stages.
	chunks = chunks[:0]
	c := manifest.NewChunker(bytes.NewReader(sample), manifest.DefaultChunkParams)
	for {
		data, err := c.Next()
		if err != nil {
			break
		}
		chunks = append(chunks, append([]byte(nil), data...))
	}
	hash = rate(func() {
		for _, data := range chunks {
			sha256.Sum256(data)
		}
	})
	frame := make([]byte, 0, manifest.MaxChunkSize)
	compress = rate(func() {
		for _, data := range chunks {
			frame = store.EncodeFrame(frame[:0], data)
		}
	})
	return chunk, hash, compress
}

func publishOnce(b *testing.B, path, parent string) (*PublishResult, time.Duration) {
	b.Helper()
	dir, err := os.MkdirTemp(parent, "patchctl-bench-store-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := store.OpenDisk(dir)
	if err != nil {
		b.Fatal(err)
	}
	cat, err := OpenCatalog(dir)
	if err != nil {
		b.Fatal(err)
	}
	sources, err := CollectSources([]string{path})
	if err != nil {
		b.Fatal(err)
	}
	key := testKey(b)
	// Start from a quiet disk: write-back (and, on file systems mounted
	// with discard, the trims of the last run's deleted store) left over
	// from setup would otherwise land on this publish's first flush.
	syscall.Sync()
	start := time.Now()
	res, err := Publish(context.Background(), s, cat, []ed25519.PrivateKey{key}, sources, PublishOptions{Name: "SP-S041000005"})
	if err != nil {
		b.Fatal(err)
	}
	return res, time.Since(start)
}

// diskWriteRate measures what the file system under dir takes of durable
// writes: 256 MiB written and fsynced, in MB/s.
func diskWriteRate(b *testing.B, dir string) float64 {
	b.Helper()
	f, err := os.CreateTemp(dir, "patchctl-bench-disk-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	// Fresh random bytes, so nothing below the file system can dedupe or
	// compress them.
	buf := make([]byte, 256<<20)
	io.ReadFull(packgen.New(uint64(time.Now().UnixNano()), int64(len(buf)), packgen.Incompressible), buf)
	start := time.Now()
	if _, err := f.Write(buf); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return float64(len(buf)) / time.Since(start).Seconds() / 1e6
}

// BenchmarkPublish1GiB publishes 1 GiB into a store on the disk and on tmpfs
// (where the file system costs nothing, so the pipeline's own speed shows),
// and compares the rate with the model cores / (1/compress + 1/hash +
// 1/chunk), each stage measured alone in the same run. The pipeline also
// computes whole-file SHA-256 digests, which the model does not count. On the
// disk, publishing incompressible data is bounded by the file system's durable
// write rate, measured in the same run as disk_write_MB/s.
func BenchmarkPublish1GiB(b *testing.B) {
	for _, tc := range []struct {
		name string
		kind packgen.Kind
	}{{"software", packgen.Software}, {"incompressible", packgen.Incompressible}} {
		for _, where := range []string{"disk", "tmpfs"} {
			b.Run(tc.name+"/"+where, func(b *testing.B) {
				parent := os.TempDir()
				if where == "tmpfs" {
					parent = "/dev/shm"
					if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
						b.Skip("no /dev/shm")
					}
				}
				path := benchFile(b, 1<<30, tc.kind)
				chunk, hash, compress := stageRates(b, path)
				cores := float64(runtime.GOMAXPROCS(0))
				model := cores / (1/compress + 1/hash + 1/chunk)
				disk := diskWriteRate(b, parent)
				b.ResetTimer()
				var res *PublishResult
				var elapsed time.Duration
				for b.Loop() {
					res, elapsed = publishOnce(b, path, parent)
				}
				rate := float64(res.TotalBytes) / elapsed.Seconds() / 1e6
				b.ReportMetric(chunk, "chunk_MB/s")
				b.ReportMetric(hash, "hash_MB/s")
				b.ReportMetric(compress, "compress_MB/s")
				b.ReportMetric(model, "model_MB/s")
				b.ReportMetric(disk, "disk_write_MB/s")
				b.ReportMetric(rate, "publish_MB/s")
				b.ReportMetric(100*rate/model, "pct_of_model")
				b.ReportMetric(float64(res.TotalBytes)/float64(res.StoredBytes), "ratio")
			})
		}
	}
}

// BenchmarkPublishVsZstd compares publishing a 128 MiB tar of real software
// with compressing it by `zstd -3 -T1`, in wall time and compression ratio.
func BenchmarkPublishVsZstd(b *testing.B) {
	zstdBin, err := exec.LookPath("zstd")
	if err != nil {
		b.Skip("no zstd command")
	}
	path := goTar(b)
	b.SetBytes(128 << 20)
	var zstdTime, ourTime time.Duration
	var zstdSize int64
	var res *PublishResult
	for b.Loop() {
		out := filepath.Join(b.TempDir(), "out.zst")
		syscall.Sync()
		start := time.Now()
		if err := exec.Command(zstdBin, "-3", "-T1", "-q", "-f", path, "-o", out).Run(); err != nil {
			b.Fatal(err)
		}
		zstdTime = time.Since(start)
		fi, err := os.Stat(out)
		if err != nil {
			b.Fatal(err)
		}
		zstdSize = fi.Size()
		res, ourTime = publishOnce(b, path, os.TempDir())
	}
	b.ReportMetric(zstdTime.Seconds(), "zstd3_s")
	b.ReportMetric(ourTime.Seconds(), "publish_s")
	b.ReportMetric(ourTime.Seconds()/zstdTime.Seconds(), "time_vs_zstd3")
	b.ReportMetric(float64(res.TotalBytes)/float64(zstdSize), "zstd3_ratio")
	b.ReportMetric(float64(res.TotalBytes)/float64(res.StoredBytes), "publish_ratio")
}

// BenchmarkChunkSizeDedupe is the measurement behind DefaultChunkParams: a
// 128 MiB tar of real software with 1% of its bytes overwritten in 4 KiB runs
// at scattered places, chunked at several average sizes. kept_pct is the share
// of the edited version's chunks already stored from the original; new_pct the
// share of its bytes that would have to move; ratio the zstd ratio of the
// chunks (sampled).
func BenchmarkChunkSizeDedupe(b *testing.B) {
	data, err := os.ReadFile(goTar(b))
	if err != nil {
		b.Fatal(err)
	}
	edited := append([]byte(nil), data...)
	rng := packgen.New(9, int64(len(data)/100), packgen.Incompressible)
	step := len(data) / (len(data) / 100 / 4096)
	for off := step / 2; off+4096 < len(edited); off += step {
		io.ReadFull(rng, edited[off:off+4096])
	}
	for _, avg := range []int{16 << 10, 64 << 10, 256 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("avg=%dKiB", avg>>10), func(b *testing.B) {
			p := manifest.ChunkParams{Min: avg / 4, Avg: avg, Max: avg * 4}
			var kept, total, newBytes, raw, packed int
			for b.Loop() {
				seen := map[[32]byte]bool{}
				c := manifest.NewChunker(bytes.NewReader(data), p)
				for i := 0; ; i++ {
					chunk, err := c.Next()
					if err != nil {
						break
					}
					seen[sha256.Sum256(chunk)] = true
					if i%8 == 0 {
						raw += len(chunk)
						packed += len(store.EncodeFrame(nil, chunk))
					}
				}
				kept, total, newBytes = 0, 0, 0
				c = manifest.NewChunker(bytes.NewReader(edited), p)
				for {
					chunk, err := c.Next()
					if err != nil {
						break
					}
					total++
					if seen[sha256.Sum256(chunk)] {
						kept++
					} else {
						newBytes += len(chunk)
					}
				}
			}
			b.ReportMetric(100*float64(kept)/float64(total), "kept_pct")
			b.ReportMetric(100*float64(newBytes)/float64(len(edited)), "new_pct")
			b.ReportMetric(float64(total), "chunks")
			b.ReportMetric(float64(raw)/float64(packed), "ratio")
		})
	}
}
