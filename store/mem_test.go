package store_test

import (
	"testing"

	"github.com/patchctl/patchctl/store"
	"github.com/patchctl/patchctl/store/storetest"
)

func TestMemConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) store.Store { return store.NewMem() })
}
