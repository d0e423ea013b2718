package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/testnet/packgen"
)

// TestPublishArchivePairStoresChangedMembers publishes two versions of a
// ZIP and of a tar service pack, where the second renames the top folder,
// moves every time stamp and changes a few members: it stores little more
// than those members and the headers, says which members were new, and
// extracts byte for byte.
func TestPublishArchivePairStoresChangedMembers(t *testing.T) {
	tree := packgen.Tree{Seed: 5, Files: 400, Size: 6 << 20, Changed: 9}
	kinds := []struct {
		name  string
		write func(w *bytes.Buffer, version int) (packgen.ArchiveStats, error)
	}{
		{"zip", func(w *bytes.Buffer, v int) (packgen.ArchiveStats, error) { return tree.WriteZip(w, v) }},
		{"zip-streamed", func(w *bytes.Buffer, v int) (packgen.ArchiveStats, error) {
			s := tree
			s.Streamed = true
			return s.WriteZip(w, v)
		}},
		{"tar", func(w *bytes.Buffer, v int) (packgen.ArchiveStats, error) { return tree.WriteTar(w, v) }},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			var v1, v2 bytes.Buffer
			if _, err := k.write(&v1, 1); err != nil {
				t.Fatal(err)
			}
			st, err := k.write(&v2, 2)
			if err != nil {
				t.Fatal(err)
			}
			p1 := filepath.Join(f.dir, "v1", "pack."+k.name)
			p2 := filepath.Join(f.dir, "v2", "pack."+k.name)
			writeFile(t, p1, v1.Bytes())
			writeFile(t, p2, v2.Bytes())
			f.publish(t, "SP-S041000005", p1)
			sources, err := CollectSources([]string{p2})
			if err != nil {
				t.Fatal(err)
			}
			res, err := Publish(context.Background(), f.store, f.cat, []ed25519.PrivateKey{f.key}, sources, PublishOptions{Name: "SP-S041000006", Ingest: IngestOptions{Explain: true}})
			if err != nil {
				t.Fatal(err)
			}
			ratio := float64(res.NewFileBytes) / float64(st.Floor())
			t.Logf("%d bytes, %d members: new %d file bytes (%d stored), floor %d: ratio %.3f; %d members changed",
				st.Size, res.Members, res.NewFileBytes, res.NewBytes, st.Floor(), ratio, res.MembersChanged)
			if ratio > 1.1 {
				t.Errorf("second version stores %d new bytes, %.2f × the floor of %d, want at most 1.1", res.NewFileBytes, ratio, st.Floor())
			}
			if res.NewFileBytes+res.ReusedBytes != res.TotalBytes || res.Archives != 1 || res.Members != st.Members {
				t.Errorf("stats %+v, archive %+v", res.IngestStats, st)
			}
			if res.MembersChanged != tree.Changed || len(res.MemberStats) != st.Members {
				t.Errorf("%d members changed of %d listed, want %d of %d", res.MembersChanged, len(res.MemberStats), tree.Changed, st.Members)
			}
			m, _, err := f.root.VerifyManifest(res.Envelope, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if m.Chunking != manifest.DefaultArchiveChunkParams {
				t.Errorf("manifest records chunking %+v", m.Chunking)
			}
			out := filepath.Join(f.dir, "out")
			if err := store.Extract(context.Background(), f.store, m, out, store.ExtractOptions{}); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(out, "pack."+k.name))
			if err != nil || !bytes.Equal(got, v2.Bytes()) {
				t.Fatalf("extracted pack differs from the published one (%v)", err)
			}
		})
	}
}

// TestIngestPlainChunkingOnRequest: explicit parameters without a method
// cut with plain FastCDC, and a method this build does not know is refused.
func TestIngestPlainChunkingOnRequest(t *testing.T) {
	var pack bytes.Buffer
	packgen.Tree{Seed: 1, Files: 50, Size: 1 << 20}.WriteZip(&pack, 1)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.zip"), pack.Bytes())
	sources, _ := CollectSources([]string{filepath.Join(dir, "p.zip")})
	_, st, err := Ingest(context.Background(), store.NewMem(), sources, IngestOptions{Chunking: manifest.DefaultChunkParams})
	if err != nil || st.Members != 0 || st.Archives != 0 {
		t.Fatalf("plain chunking: %v, %+v", err, st)
	}
	_, st, err = Ingest(context.Background(), store.NewMem(), sources, IngestOptions{})
	if err != nil || st.Members == 0 || st.Archives != 1 {
		t.Fatalf("default chunking: %v, %+v", err, st)
	}
	p := manifest.DefaultChunkParams
	p.Method = "archive/9"
	if _, _, err := Ingest(context.Background(), store.NewMem(), sources, IngestOptions{Chunking: p}); err == nil {
		t.Fatal("an unknown chunking method was accepted")
	}
}
