package prober_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
	"github.com/proxy-hopper/proxy-hopper/prober"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// With the Redis backend, "free" is judged across agents: an IP another
// agent uses or cools down is not probed, and while this agent probes it
// no other agent gets it. A quarantine after failed probes is seen by
// every agent.
func TestRedisAcrossAgents(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clock := pool.NewFakeClock(t0)
	o := newOrigin(t)
	healthy := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	dead := refusing(t)
	prefix := fmt.Sprintf("prober%d:", os.Getpid())
	cfg := pool.Config{MinRequestInterval: 5 * time.Second, FailuresUntilQuarantine: 5, QuarantineTime: time.Hour}
	agentPool := func() *pool.Pool {
		b, err := redis.New(srv.URL(0), redis.Options{Prefix: prefix, Clock: clock, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		p, err := pool.New(ctx, "t", []string{healthy, dead}, b, cfg, pool.Options{Clock: clock, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(); b.Close() })
		return p
	}
	mine, other := agentPool(), agentPool()
	pr, err := prober.New([]prober.Target{{Name: "t", Pool: mine, Upstreams: map[string]proxy.Upstream{healthy: up(healthy), dead: up(dead)}}},
		prober.Options{URLs: []string{o.URL + "/p"}, Timeout: 2 * time.Second, Jitter: -1, Clock: clock,
			FailuresUntilQuarantine: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// The other agent uses healthy: not probed here; dead is, and is
	// quarantined in the shared pool at the first failure.
	if got, err := other.Acquire(ctx); err != nil || got != healthy {
		t.Fatalf("other agent Acquire = %q, %v", got, err)
	}
	rep := pr.Round(ctx)
	if rep.Skipped[healthy] != prober.SkipBusy || !slices.Equal(rep.Probed, []string{dead}) {
		t.Fatalf("round %+v, want healthy skipped (in use by the other agent), dead probed", rep)
	}
	if s, err := other.State(ctx, dead); err != nil || s.State != pool.StateQuarantined {
		t.Fatalf("dead as the other agent sees it: %+v, %v; want quarantined", s, err)
	}
	// Returned by the other agent: cooling, still not probed.
	if err := other.Release(ctx, healthy, pool.Success); err != nil {
		t.Fatal(err)
	}
	if rep := pr.Round(ctx); rep.Skipped[healthy] != prober.SkipBusy {
		t.Fatalf("round %+v, want healthy skipped while cooling", rep)
	}
	// Cooled down: probed, and the other agent cannot have it meanwhile.
	clock.Advance(5 * time.Second)
	entered, release := o.holdRequests()
	defer release()
	done := make(chan prober.Report, 1)
	go func() { done <- pr.Round(ctx) }()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("probe of healthy never reached the origin")
	}
	if got, err := other.Acquire(ctx); !errors.Is(err, pool.ErrNoIP) {
		t.Errorf("other agent Acquire during the probe = %q, %v; want no IP", got, err)
	}
	release()
	if rep := <-done; !slices.Contains(rep.Probed, healthy) {
		t.Fatalf("round %+v, want healthy probed", rep)
	}
	if s, err := other.State(ctx, healthy); err != nil || s.State != pool.StateCooling {
		t.Errorf("healthy after the probe: %+v, %v; want cooling", s, err)
	}
}
