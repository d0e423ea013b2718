package store_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store"
)

// testFile is a file of a release built by publish.
type testFile struct {
	path string
	mode uint32
	data []byte
}

// publish chunks files with the real chunker, Puts the chunks into s (16 at a
// time, as a publisher would) and returns the release's manifest.
func publish(t testing.TB, s store.Putter, name string, files []testFile) *manifest.Manifest {
	t.Helper()
	m := &manifest.Manifest{
		Schema:   manifest.SchemaVersion,
		Name:     name,
		Channel:  "stable",
		Sequence: 1,
		Created:  time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		Expires:  time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC),
		Chunking: manifest.DefaultChunkParams,
	}
	var g errgroup.Group
	g.SetLimit(16)
	for _, f := range files {
		sum := sha256.Sum256(f.data)
		mf := manifest.File{Path: f.path, Mode: f.mode, Size: int64(len(f.data)), SHA256: hex.EncodeToString(sum[:])}
		c := manifest.NewChunker(bytes.NewReader(f.data), m.Chunking)
		for {
			chunk, err := c.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			chunk = bytes.Clone(chunk)
			id := manifest.ChunkID(chunk)
			mf.Chunks = append(mf.Chunks, manifest.ChunkRef{CID: id, Size: uint32(len(chunk))})
			g.Go(func() error { return s.Put(t.Context(), id, chunk) })
		}
		m.Files = append(m.Files, mf)
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("publish: %v", err)
	}
	return m
}
