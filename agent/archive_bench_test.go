package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// archivePair is one realistic pair of consecutive packs for the archive
// benchmarks.
type archivePair struct {
	name   string
	tree   packgen.Tree
	format string // zip or tar
}

// archivePairs: release-shaped pairs (11,424 entries, ~70 MB as ZIP, the 23
// largest files changed, ~43% of the compressed bytes) as ZIP with sizes in
// the headers, as ZIP with data descriptors and as tar; and source trees
// with 1.5% of the files changed at random.
func archivePairs() []archivePair {
	release := packgen.Tree{Seed: 71, ChangeLargest: true}
	streamed := release
	streamed.Streamed = true
	tree := packgen.Tree{Seed: 72, Changed: 158}
	return []archivePair{
		{"release/zip", release, "zip"},
		{"release/zip-streamed", streamed, "zip"},
		{"release/tar", release, "tar"},
		{"tree/zip", tree, "zip"},
		{"tree/tar", tree, "tar"},
	}
}

// files writes both versions once into the temp dir (the content is fixed
// by the tree) and returns their paths and the second one's stats.
func (p archivePair) files(b *testing.B) (v1, v2 string, st packgen.ArchiveStats) {
	b.Helper()
	var paths [2]string
	for i := range paths {
		t := p.tree
		paths[i] = filepath.Join(os.TempDir(), fmt.Sprintf("patchctl-bench-%s-%d-%d-%v-%v-v%d.%s",
			p.format, t.Seed, t.Changed, t.ChangeLargest, t.Streamed, i+1, p.format))
		var buf bytes.Buffer
		var err error
		if p.format == "zip" {
			st, err = t.WriteZip(io.Discard, i+1)
		} else {
			st, err = t.WriteTar(io.Discard, i+1)
		}
		if err != nil {
			b.Fatal(err)
		}
		if fi, err := os.Stat(paths[i]); err == nil && fi.Size() == st.Size {
			continue
		}
		if p.format == "zip" {
			_, err = t.WriteZip(&buf, i+1)
		} else {
			_, err = t.WriteTar(&buf, i+1)
		}
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(paths[i], buf.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return paths[0], paths[1], st
}

// BenchmarkArchivePair publishes the first version of each pair, then the
// second, into a memory store, with archive-aware and with plain chunking,
// and reports for the second:
//
//   - new_vs_floor: file bytes in chunks stored anew over the floor (its
//     changed members, all headers and data descriptors, the central
//     directory or tar end); target at most 1.1.
//   - growth_vs_size: stored (compressed) bytes the store grew by, over the
//     archive's size; target at most 0.55 for the release-shaped ZIP.
//   - new_pct: file bytes in new chunks, in percent of the archive.
//   - chunks: chunks of the second version.
func BenchmarkArchivePair(b *testing.B) {
	if testing.Short() {
		b.Skip("generates ~0.9 GB of archives on first use")
	}
	for _, p := range archivePairs() {
		v1, v2, st := p.files(b)
		for _, method := range []struct {
			name   string
			params manifest.ChunkParams
		}{{"archive", manifest.DefaultArchiveChunkParams}, {"cdc", manifest.DefaultChunkParams}} {
			b.Run(p.name+"/"+method.name, func(b *testing.B) {
				var second IngestStats
				for b.Loop() {
					s := store.NewMem()
					opts := IngestOptions{Chunking: method.params}
					for i, path := range []string{v1, v2} {
						sources, err := CollectSources([]string{path})
						if err != nil {
							b.Fatal(err)
						}
						_, stats, err := Ingest(context.Background(), s, sources, opts)
						if err != nil {
							b.Fatal(err)
						}
						if i == 1 {
							second = stats
						}
					}
				}
				b.ReportMetric(float64(second.NewFileBytes)/float64(st.Floor()), "new_vs_floor")
				b.ReportMetric(float64(second.NewBytes)/float64(st.Size), "growth_vs_size")
				b.ReportMetric(100*float64(second.NewFileBytes)/float64(st.Size), "new_pct")
				b.ReportMetric(float64(second.Chunks), "chunks")
			})
		}
	}
}

// BenchmarkArchiveChunkerRelease measures boundary finding alone (no
// hashing, no store) on the release-shaped packs, read from memory: the
// archive chunker against the plain one on the same bytes. Target: at least
// 1 GB/s on one core for ZIPs.
func BenchmarkArchiveChunkerRelease(b *testing.B) {
	if testing.Short() {
		b.Skip("generates ~0.9 GB of archives on first use")
	}
	for _, p := range archivePairs()[:3] {
		_, v2, _ := p.files(b)
		data, err := os.ReadFile(v2)
		if err != nil {
			b.Fatal(err)
		}
		for _, method := range []string{"archive", "cdc"} {
			b.Run(p.name+"/"+method, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					var c interface{ Next() ([]byte, error) } = manifest.NewChunker(bytes.NewReader(data), manifest.DefaultChunkParams)
					if method == "archive" {
						c = manifest.NewArchiveChunker(bytes.NewReader(data), manifest.DefaultChunkParams)
					}
					for {
						_, err := c.Next()
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}
