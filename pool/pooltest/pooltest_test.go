package pooltest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/pool/pooltest"
)

// The suite itself must pass a correct backend that does not tell it who
// waits, so it is usable for backends that cannot.
func TestRunWithoutWaitCounter(t *testing.T) {
	if testing.Short() {
		t.Skip("waits pooltest.Settle per blocked caller")
	}
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		b := memory.New(clock)
		t.Cleanup(func() { b.Close() })
		return opaque{b}
	})
}

// opaque hides every method but pool.Backend's.
type opaque struct{ pool.Backend }

// The suite must also pass a correct backend whose Pop timeouts run in real
// time, as a Redis backend's blocking wait would.
func TestRunRealTimeTimeouts(t *testing.T) {
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		b := memory.New(clock)
		t.Cleanup(func() { b.Close() })
		return realTimeouts{b}
	})
}

type realTimeouts struct{ *memory.Backend }

func (b realTimeouts) Pop(ctx context.Context, target string, timeout time.Duration) (string, error) {
	if timeout <= 0 {
		return b.Backend.Pop(ctx, target, timeout)
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr, err := b.Backend.Pop(waitCtx, target, 1<<62) // never by the fake clock
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return "", pool.ErrNoIP
	}
	return addr, err
}

func (b realTimeouts) PopExcept(ctx context.Context, target string, timeout time.Duration, except []string) (string, error) {
	if timeout <= 0 {
		return b.Backend.PopExcept(ctx, target, timeout, except)
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr, err := b.Backend.PopExcept(waitCtx, target, 1<<62, except) // never by the fake clock
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return "", pool.ErrNoIP
	}
	return addr, err
}
