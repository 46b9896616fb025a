package memory_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
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

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func seeded(t *testing.T, clock pool.Clock, addrs ...string) *memory.Backend {
	t.Helper()
	b := memory.New(clock)
	t.Cleanup(func() { b.Close() })
	if err := b.Seed(context.Background(), "t", addrs); err != nil {
		t.Fatal(err)
	}
	return b
}

type result struct {
	addr string
	err  error
}

func goPop(t *testing.T, ctx context.Context, b *memory.Backend, timeout time.Duration) <-chan result {
	ch := make(chan result, 1)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Go(func() {
		addr, err := b.Pop(ctx, "t", timeout)
		ch <- result{addr, err}
	})
	return ch
}

// waiting waits until n calls wait in Pop.
func waiting(t *testing.T, b *memory.Backend, n int) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		if got := b.Waiting("t"); got != n {
			return fmt.Errorf("Waiting = %d, want %d", got, n)
		}
		return nil
	})
}

// With its clock, the memory backend is exact to the nanosecond.
func TestReadyAtExact(t *testing.T) {
	ctx := context.Background()
	clock := pool.NewFakeClock(t0)
	b := seeded(t, clock, "a")
	a, _ := b.Pop(ctx, "t", 0)
	if err := b.Push(ctx, "t", a, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second - 1)
	if addr, err := b.Pop(ctx, "t", 0); !errors.Is(err, pool.ErrNoIP) {
		t.Fatalf("1ns before readyAt: Pop = %q, %v; want %v", addr, err, pool.ErrNoIP)
	}
	if s, _ := b.Snapshot(ctx, "t"); s[0].State != pool.StateCooling {
		t.Fatalf("1ns before readyAt: %s, want cooling", s[0].State)
	}
	clock.Advance(1)
	if s, _ := b.Snapshot(ctx, "t"); s[0].State != pool.StateAvailable {
		t.Fatalf("at readyAt: %s, want available", s[0].State)
	}
	if addr, err := b.Pop(ctx, "t", 0); err != nil || addr != "a" {
		t.Fatalf("at readyAt: Pop = %q, %v; want a", addr, err)
	}
}

func TestPopTimeoutExact(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := pool.NewFakeClock(t0)
	b := seeded(t, clock, "a")
	b.Pop(ctx, "t", 0)
	ch := goPop(t, ctx, b, time.Second)
	waiting(t, b, 1)
	clock.Advance(time.Second - 1)
	// No timer fired, so nothing can have let the waiter go.
	if n := b.Waiting("t"); n != 1 {
		t.Fatalf("1ns before the timeout Waiting = %d, want 1", n)
	}
	clock.Advance(1)
	select {
	case r := <-ch:
		if !errors.Is(r.err, pool.ErrNoIP) {
			t.Fatalf("Pop = %q, %v; want %v", r.addr, r.err, pool.ErrNoIP)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Pop still blocked at its timeout")
	}
	if n := b.Waiting("t"); n != 0 {
		t.Fatalf("after the timeout Waiting = %d, want 0", n)
	}
}

// lateClock is a clock whose timers are late: they never fire. Real timers
// fire late under load, and the backend must not rely on their punctuality.
type lateClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *lateClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *lateClock) set(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
}

type lateTimer struct{}

func (lateTimer) Stop() bool { return true }

func (c *lateClock) AfterFunc(time.Duration, func()) pool.Timer { return lateTimer{} }

// A cooldown that has ended serves the caller already waiting before a
// newcomer, even when the timer for it is late; and the newcomer is not
// told there is no IP while one is free.
func TestCooledIPsServeWaitersFirst(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := &lateClock{now: t0}
	b := seeded(t, clock, "a", "b")
	b.Pop(ctx, "t", 0)
	b.Pop(ctx, "t", 0)
	ch := goPop(t, ctx, b, time.Hour)
	waiting(t, b, 1)
	for _, a := range []string{"a", "b"} {
		if err := b.Push(ctx, "t", a, t0.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	clock.set(t0.Add(time.Second))
	if addr, err := b.Pop(ctx, "t", 0); err != nil || addr != "b" {
		t.Fatalf("newcomer Pop = %q, %v; want b (a goes to the earlier waiter)", addr, err)
	}
	select {
	case r := <-ch:
		if r.err != nil || r.addr != "a" {
			t.Fatalf("waiter got %q, %v; want a", r.addr, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not served though a cooled down")
	}
}

func TestWaitingUnknownTarget(t *testing.T) {
	if n := memory.New(nil).Waiting("nope"); n != 0 {
		t.Fatalf("Waiting on unknown target = %d, want 0", n)
	}
}
