package store

import (
	"context"
	"os"
	"testing"

	"github.com/patchctl/patchctl/manifest"
)

// A store on a memory file system skips flushes, which make nothing durable
// there, and still stores and reads back every chunk under its name.
func TestDiskOnAMemoryFileSystemSkipsFlushesAndKeepsChunks(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "patchctl-store-test-")
	if err != nil {
		t.Skipf("no /dev/shm here: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if !inMemory(dir) {
		t.Skip("/dev/shm is not a memory file system here")
	}
	d, err := OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if !d.volatile {
		t.Fatal("a store on tmpfs still flushes")
	}
	if other := t.TempDir(); !inMemory(other) {
		od, err := OpenDisk(other)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { od.Close() })
		if od.volatile {
			t.Fatal("a store off tmpfs skips flushes")
		}
	}
	ctx := context.Background()
	data := []byte("a chunk on tmpfs")
	id := manifest.ChunkID(data)
	if err := d.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := d.Get(ctx, id)
	if err != nil || string(got) != string(data) {
		t.Fatalf("Get = %q, %v; want %q", got, err, data)
	}
}
