package packgen

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"io"
	"strings"
	"testing"
)

// TestTreeVersions: two versions of a tree differ in the top folder, the
// times and the changed files' content, and in nothing else; the same tree
// and version always give the same bytes.
func TestTreeVersions(t *testing.T) {
	tree := Tree{Seed: 3, Files: 300, Size: 4 << 20, Changed: 6}
	for _, streamed := range []bool{false, true} {
		tree.Streamed = streamed
		var v1, v2, again bytes.Buffer
		s1, err := tree.WriteZip(&v1, 1)
		if err != nil {
			t.Fatal(err)
		}
		s2, _ := tree.WriteZip(&v2, 2)
		tree.WriteZip(&again, 1)
		if !bytes.Equal(v1.Bytes(), again.Bytes()) {
			t.Fatal("the same tree and version wrote different bytes")
		}
		if s1.Size != int64(v1.Len()) || s2.Members != s1.Members || s2.ChangedBytes == 0 || s2.Floor() >= s2.Size {
			t.Fatalf("stats %+v, %+v", s1, s2)
		}
		changed := 0
		r1, _ := zip.NewReader(bytes.NewReader(v1.Bytes()), int64(v1.Len()))
		r2, err := zip.NewReader(bytes.NewReader(v2.Bytes()), int64(v2.Len()))
		if err != nil || len(r1.File) != len(r2.File) || len(r1.File) != s1.Members {
			t.Fatalf("%v; %d and %d members", err, len(r1.File), len(r2.File))
		}
		for i, f1 := range r1.File {
			f2 := r2.File[i]
			if strings.TrimPrefix(f1.Name, "product-4.31.0/") != strings.TrimPrefix(f2.Name, "product-4.32.0/") || f1.Modified.Equal(f2.Modified) {
				t.Fatalf("member %d: %s at %s and %s at %s", i, f1.Name, f1.Modified, f2.Name, f2.Modified)
			}
			if f1.CRC32 != f2.CRC32 {
				changed++
			}
			if streamed != (f1.Flags&8 != 0) && !strings.HasSuffix(f1.Name, "/") {
				t.Fatalf("member %s has flags %x", f1.Name, f1.Flags)
			}
		}
		if changed != tree.Changed {
			t.Errorf("%d members changed, want %d", changed, tree.Changed)
		}
	}
	var t1, t2 bytes.Buffer
	tree.WriteTar(&t1, 1)
	tree.WriteTar(&t2, 2)
	sums := func(b []byte) map[[32]byte]bool {
		m := map[[32]byte]bool{}
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			if _, err := tr.Next(); err != nil {
				return m
			}
			data, _ := io.ReadAll(tr)
			m[sha256.Sum256(data)] = true
		}
	}
	a, b := sums(t1.Bytes()), sums(t2.Bytes())
	missing := 0
	for k := range b {
		if !a[k] {
			missing++
		}
	}
	if missing != tree.Changed {
		t.Errorf("the tar's second version has %d new contents, want %d", missing, tree.Changed)
	}
}
