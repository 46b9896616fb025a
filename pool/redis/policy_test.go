package redis_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
)

// The pool's queue cap and Blame, which need nothing new of a backend,
// work the same on Redis as on memory (pool tests): a waiter beyond
// MaxQueueLength is refused at once, and a failure counted after a
// neutral release quarantines at the threshold.
func TestPoolQueueCapAndBlame(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clock := pool.NewFakeClock(t0)
	be := newBackend(t, srv.URL(0), redis.Options{Clock: clock})
	p, err := pool.New(ctx, "t", []string{"x", "y"}, be, pool.Config{
		MaxQueueWait: time.Minute, FailuresUntilQuarantine: 2, QuarantineTime: time.Minute, MaxQueueLength: 1,
	}, pool.Options{Clock: clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	x, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	y, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := p.Acquire(ctx)
		got <- err
	}()
	testenv.Eventually(t, 5*time.Second, func() error { return wantWaiting(be, 1) })
	short, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	if addr, err := p.Acquire(short); !errors.Is(err, pool.ErrQueueFull) {
		t.Fatalf("second waiter: Acquire = %q, %v; want %v at once", addr, err, pool.ErrQueueFull)
	}
	if err := p.Release(ctx, x, pool.Neutral); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("first waiter: %v", err)
	}
	for i := 1; i <= 2; i++ {
		if err := p.Blame(ctx, y); err != nil {
			t.Fatal(err)
		}
		s, err := p.State(ctx, y)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && (s.State != pool.StateInUse || s.Failures != 1) {
			t.Fatalf("after one Blame: %+v", s)
		}
		if i == 2 && s.PendingQuarantine.IsZero() {
			t.Fatalf("after two Blames of an IP in use: %+v, want marked for quarantine", s)
		}
	}
	if err := p.Release(ctx, y, pool.Neutral); err != nil {
		t.Fatal(err)
	}
	if s, err := p.State(ctx, y); err != nil || s.State != pool.StateQuarantined {
		t.Fatalf("blamed IP once released: %+v, %v; want quarantined", s, err)
	}
}
