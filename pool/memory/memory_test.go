package memory_test

import (
	"testing"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/pool/pooltest"
)

var _ pooltest.WaitCounter = (*memory.Backend)(nil)

func TestContract(t *testing.T) {
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		b := memory.New(clock)
		t.Cleanup(func() { b.Close() })
		return b
	})
}
