package store_test

import (
	"testing"

	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

func TestDiskConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openDisk(t, t.TempDir()) })
}

func openDisk(t testing.TB, dir string) *store.Disk {
	t.Helper()
	d, err := store.OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
