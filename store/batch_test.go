package store_test

import (
	"context"
	"sync"
	"testing"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/store/storetest"
)

// TestBatchChunksAreReadableAtOnceAndDurableOnCommit: Add stores without
// waiting for the disk, so a chunk added is readable at once (a peer may be
// served it); Commit is what makes the batch survive a power loss.
func TestBatchChunksAreReadableAtOnceAndDurableOnCommit(t *testing.T) {
	ctx := context.Background()
	d := openDisk(t, t.TempDir())
	b := d.NewBatch()
	var chunks [][]byte
	for i := range 20 {
		if i%2 == 0 {
			chunks = append(chunks, storetest.Random(uint64(i), 40<<10))
		} else {
			chunks = append(chunks, storetest.Text(uint64(i), 40<<10))
		}
	}
	var wg sync.WaitGroup
	for _, c := range chunks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			added, err := b.Add(ctx, c)
			if err != nil || !added.New || !added.ID.Equals(manifest.ChunkID(c)) || added.StoredSize == 0 {
				t.Errorf("add: %+v, %v", added, err)
			}
		}()
	}
	wg.Wait()
	for _, c := range chunks {
		if ok, err := d.Has(ctx, manifest.ChunkID(c)); !ok || err != nil {
			t.Fatalf("chunk added is not readable before Commit: %v %v", ok, err)
		}
	}
	again, err := b.Add(ctx, chunks[0])
	if err != nil || again.New {
		t.Fatalf("adding a chunk twice in a batch: %+v, %v", again, err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		got, err := d.Get(ctx, manifest.ChunkID(c))
		if err != nil || string(got) != string(c) {
			t.Fatalf("after Commit: %v", err)
		}
	}
	// A chunk already stored is not new to a later batch.
	later := d.NewBatch()
	added, err := later.Add(ctx, chunks[1])
	if err != nil || added.New {
		t.Fatalf("adding a stored chunk: %+v, %v", added, err)
	}
	if err := later.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestPutDuringBatch: a Put waiting for its own chunk flushes the
// batch's queued files with it, and both end up stored.
func TestPutDuringBatch(t *testing.T) {
	ctx := context.Background()
	d := openDisk(t, t.TempDir())
	b := d.NewBatch()
	queued := storetest.Random(1, 10<<10)
	if _, err := b.Add(ctx, queued); err != nil {
		t.Fatal(err)
	}
	put := storetest.Random(2, 10<<10)
	if err := d.Put(ctx, manifest.ChunkID(put), put); err != nil {
		t.Fatal(err)
	}
	if ok, _ := d.Has(ctx, manifest.ChunkID(put)); !ok {
		t.Fatal("Put returned before its chunk was stored")
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get(ctx, manifest.ChunkID(queued)); err != nil {
		t.Fatal(err)
	}
}
