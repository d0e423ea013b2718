package store_test

import (
	"testing"

	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

func TestDiskConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openDisk(t, t.TempDir()) })
}

func TestFileStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestDiskConformanceSmallPacks runs the suite with packs sealed every few
// chunks, so that every test also crosses pack boundaries.
func TestDiskConformanceSmallPacks(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openDiskWith(t, t.TempDir(), store.DiskOptions{PackSize: 16 << 10})
	})
}

func openDisk(t testing.TB, dir string) *store.Disk {
	t.Helper()
	return openDiskWith(t, dir, store.DiskOptions{})
}

// openDiskWith opens a Disk that the test closes when it ends.
func openDiskWith(t testing.TB, dir string, opts store.DiskOptions) *store.Disk {
	t.Helper()
	d, err := store.OpenDiskWith(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}
