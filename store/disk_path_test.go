package store

import (
	"path/filepath"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/patchctl/patchctl/manifest"
)

// TestChunkPathSpellsTheCIDString checks that path, which encodes the name
// by hand, names chunks as id.String() does: a store written before keeps
// its chunks.
func TestChunkPathSpellsTheCIDString(t *testing.T) {
	d, err := openFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ids := []cid.Cid{}
	for i := range 500 {
		ids = append(ids, manifest.ChunkID(random(uint64(i), 1+i*7)))
	}
	// Not chunk IDs, but path must not misname them either.
	mh, err := multihash.Sum([]byte("x"), multihash.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, cid.NewCidV0(mh), cid.NewCidV1(cid.DagJSON, mh))
	for _, id := range ids {
		name := id.String()
		want := filepath.Join(d.chunks, name[len(name)-2:], name+chunkExt)
		if got := d.path(id); got != want {
			t.Fatalf("path(%s) = %s, want %s", id, got, want)
		}
	}
}
