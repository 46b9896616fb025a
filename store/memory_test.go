package store_test

import (
	"testing"

	"github.com/proxy-hopper/proxy-hopper/store"
	"github.com/proxy-hopper/proxy-hopper/store/storetest"
)

func TestMemoryContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, store.Store) {
		a := store.NewMemory()
		b := a.Share()
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	})
}
