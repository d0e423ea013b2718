package store_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

// software returns n bytes of a tar of GOROOT/src, the stand-in for the
// compressible part of a service pack, or source-like text if GOROOT is not
// there.
var software = sync.OnceValue(func() []byte {
	const n = 32 << 20
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	goroot, _ := exec.Command("go", "env", "GOROOT").Output()
	filepath.WalkDir(filepath.Join(strings.TrimSpace(string(goroot)), "src"), func(p string, d fs.DirEntry, err error) error {
		if buf.Len() >= n {
			return fs.SkipAll
		}
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(data))})
		tw.Write(data)
		return nil
	})
	tw.Close()
	if buf.Len() < n {
		buf.Write(storetest.Text(1, n-buf.Len()))
	}
	return buf.Bytes()[:n]
})

// chunks64K cuts data into 64 KiB chunks, the average chunk size.
func chunks64K(data []byte) [][]byte {
	var cs [][]byte
	for len(data) >= 64<<10 {
		cs = append(cs, data[:64<<10])
		data = data[64<<10:]
	}
	return cs
}

func benchData() map[string][][]byte {
	return map[string][][]byte{
		"software": chunks64K(software()),
		"random":   chunks64K(storetest.Random(1, 32<<20)),
	}
}

func BenchmarkEncodeFrame(b *testing.B) {
	for _, name := range []string{"software", "random"} {
		cs := benchData()[name]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(64 << 10)
			b.ReportAllocs()
			dst := make([]byte, 0, store.MaxFrameSize(64<<10))
			var in, out int64
			i := 0
			for b.Loop() {
				c := cs[i%len(cs)]
				i++
				dst = store.EncodeFrame(dst[:0], c)
				in += int64(len(c))
				out += int64(len(dst))
			}
			b.ReportMetric(float64(in)/float64(out), "ratio")
		})
	}
}

func BenchmarkDecodeFrame(b *testing.B) {
	for _, name := range []string{"software", "random"} {
		cs := benchData()[name]
		frames := make([][]byte, len(cs))
		for i, c := range cs {
			frames[i] = store.EncodeFrame(nil, c)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(64 << 10)
			b.ReportAllocs()
			dst := make([]byte, 0, 64<<10+64)
			i := 0
			for b.Loop() {
				var err error
				dst, err = store.DecodeFrame(dst[:0], frames[i%len(frames)], manifest.MaxChunkSize)
				if err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkPublish is the store's side of publishing: content-defined
// chunking, chunk IDs, and Put into a Disk, 16 Puts in flight, as
// `patchctl publish` does. Its throughput on random data is the target of
// the incompressible-data fast path (600 MB/s on 2 cores).
func BenchmarkPublish(b *testing.B) {
	for _, name := range []string{"software", "random"} {
		data := software()
		if name == "random" {
			data = storetest.Random(2, len(data))
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			tmp := b.TempDir()
			// The chunker reuses its buffer, so each chunk is copied
			// for its Put, into pooled buffers as a publisher would.
			var pool sync.Pool
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(tmp, "store")
				os.RemoveAll(dir)
				s := openDisk(b, dir)
				b.StartTimer()
				var g errgroup.Group
				g.SetLimit(16)
				c := manifest.NewChunker(bytes.NewReader(data), manifest.DefaultChunkParams)
				for {
					chunk, err := c.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					buf, _ := pool.Get().(*[]byte)
					if buf == nil {
						buf = new([]byte)
					}
					*buf = append((*buf)[:0], chunk...)
					g.Go(func() error {
						defer pool.Put(buf)
						return s.Put(b.Context(), manifest.ChunkID(*buf), *buf)
					})
				}
				if err := g.Wait(); err != nil {
					b.Fatal(err)
				}
				if err := s.Sync(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkExtract assembles a 256 MiB release (four 64 MiB files, half
// software, half incompressible) from a Disk, fsyncs included.
func BenchmarkExtract(b *testing.B) {
	s := openDisk(b, b.TempDir())
	sw := software()
	var files []testFile
	for i := range 4 {
		data := storetest.Random(uint64(10+i), 64<<20)
		if i%2 == 0 {
			data = append(bytes.Clone(sw), sw...)
			data[0] = byte(i) // different content, different first chunk
		}
		files = append(files, testFile{path: filepath.Join("dir", string(rune('a'+i))+".bin"), mode: 0o644, data: data})
	}
	m := publish(b, s, "bench", files)
	files = nil
	parent := b.TempDir()
	b.SetBytes(m.TotalSize())
	b.ResetTimer()
	for b.Loop() {
		dir := filepath.Join(parent, "release")
		if err := store.Extract(b.Context(), s, m, dir, store.ExtractOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// BenchmarkFsck verifies a store of 64 MiB of content, half software, half
// incompressible; MB/s counts content bytes.
func BenchmarkFsck(b *testing.B) {
	s := openDisk(b, b.TempDir())
	data := append(bytes.Clone(software()), storetest.Random(3, 32<<20)...)
	m := publish(b, s, "bench", []testFile{{path: "all.bin", mode: 0o644, data: data}})
	var stored int64
	seen := make(map[string]bool)
	for _, c := range m.Files[0].Chunks {
		if !seen[c.CID.KeyString()] {
			seen[c.CID.KeyString()] = true
			stored += int64(c.Size)
		}
	}
	b.SetBytes(stored)
	b.ResetTimer()
	for b.Loop() {
		res, err := store.Fsck(b.Context(), s, func(p store.Problem) { b.Fatal(p) })
		if err != nil {
			b.Fatal(err)
		}
		if res.Bytes != stored {
			b.Fatalf("fsck verified %d bytes, want %d", res.Bytes, stored)
		}
	}
}
