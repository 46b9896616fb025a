package redis_test

import (
	"context"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
)

// An IP quarantined (Hold) while another agent holds it, whose holder then
// dies: when the lease runs out it goes into quarantine, not back to the
// pool, and comes back at its release time.
func TestHoldOfDeadHolder(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	clock := pool.NewFakeClock(t0)
	a, b := pair(t, srv.URL(0), redis.Options{Clock: clock, LeaseTTL: time.Minute})
	mustPop(t, a, 0)
	inUse, err := b.Hold(ctx, "t", "x", t0.Add(2*time.Minute))
	if err != nil || !inUse {
		t.Fatalf("Hold of x in use by a = %v, %v; want true", inUse, err)
	}
	a.Crash()
	clock.Advance(time.Minute)
	s, err := b.State(ctx, "t", "x")
	if err != nil || s.State != pool.StateQuarantined || !s.Until.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("x once its holder's lease ran out: %+v, %v; want quarantined until +2m", s, err)
	}
	mustEmpty(t, b) // the pop's promote quarantines it for good
	if at, ok, err := b.NextExpiry(ctx, "t"); err != nil || !ok || !at.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("NextExpiry = %v, %v, %v; want +2m", at, ok, err)
	}
	got, err := b.PopExpired(ctx, "t", t0.Add(2*time.Minute))
	if err != nil || len(got) != 1 || got[0] != "x" {
		t.Fatalf("PopExpired at +2m = %v, %v", got, err)
	}
	if err := b.Push(ctx, "t", "x", clock.Now()); err != nil {
		t.Fatal(err)
	}
	mustPop(t, b, 0)
}

// A dead holder's lease running out after the held time: the IP is simply
// back.
func TestHoldOfDeadHolderExpired(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	clock := pool.NewFakeClock(t0)
	a, b := pair(t, srv.URL(0), redis.Options{Clock: clock, LeaseTTL: time.Minute})
	mustPop(t, a, 0)
	if _, err := b.Hold(ctx, "t", "x", t0.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	a.Crash()
	clock.Advance(time.Minute)
	if got := mustPop(t, b, 0); got != "x" {
		t.Fatalf("b popped %q, want x", got)
	}
}

// Take is atomic across agents: of two agents taking the same IP, one
// gets it; and the holder's return of an IP held by another agent
// quarantines it.
func TestTakeAndHoldAcrossAgents(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	clock := pool.NewFakeClock(t0)
	a, b := pair(t, srv.URL(0), redis.Options{Clock: clock, LeaseTTL: time.Minute})
	okA, errA := a.Take(ctx, "t", "x")
	okB, errB := b.Take(ctx, "t", "x")
	if errA != nil || errB != nil || !okA || okB {
		t.Fatalf("Take by a = %v, %v; by b = %v, %v; want only a", okA, errA, okB, errB)
	}
	if a.Held("t") != 1 {
		t.Fatalf("a holds %d leases after Take, want 1", a.Held("t"))
	}
	if _, err := b.Hold(ctx, "t", "x", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := a.Push(ctx, "t", "x", clock.Now()); err != nil {
		t.Fatal(err)
	}
	if s, err := b.State(ctx, "t", "x"); err != nil || s.State != pool.StateQuarantined {
		t.Fatalf("x returned by a after b held it: %+v, %v; want quarantined", s, err)
	}
	// b releases it early: leased to b until b pushes it.
	if inUse, err := b.Unquarantine(ctx, "t", "x"); err != nil || inUse {
		t.Fatalf("Unquarantine = %v, %v", inUse, err)
	}
	if b.Held("t") != 1 {
		t.Fatalf("b holds %d leases after Unquarantine, want 1", b.Held("t"))
	}
	mustEmpty(t, a)
	if err := b.Push(ctx, "t", "x", clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, a, 0); got != "x" {
		t.Fatalf("a popped %q, want x", got)
	}
}
