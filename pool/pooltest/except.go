package pooltest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// PopExcept: a retry does not get an IP its request already tried while
// the target has another IP outside quarantine.

// popExcept0 is PopExcept with timeout 0, which must return at once.
func (e *env) popExcept0(target string, except ...string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, failsafe)
	defer cancel()
	return e.b.PopExcept(ctx, target, 0, except)
}

// popExcept takes an IP outside except that must be available now.
func (e *env) popExcept(target string, except ...string) string {
	e.t.Helper()
	addr, err := e.popExcept0(target, except...)
	if err != nil {
		e.t.Fatalf("PopExcept(%s, 0, %v): %v, want an IP", target, except, err)
	}
	return addr
}

// goPopExcept is goPop for PopExcept.
func (e *env) goPopExcept(target string, timeout time.Duration, except ...string) <-chan popResult {
	ch := make(chan popResult, 1)
	ctx, cancel := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	e.t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		addr, err := e.b.PopExcept(ctx, target, timeout, except)
		ch <- popResult{addr, err}
	})
	return ch
}

func (e *env) quarantine(target, addr string, until time.Time) {
	e.t.Helper()
	if err := e.b.Quarantine(e.ctx, target, addr, until); err != nil {
		e.t.Fatalf("Quarantine(%s, %s): %v", target, addr, err)
	}
}

// An IP outside except that is free now is taken; the skipped IPs keep
// their place in the queue for other callers.
func testExceptSkipsTried(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c", "d")
	if got := e.popExcept("t", "a"); got != "b" {
		t.Fatalf("PopExcept(a) = %s, want b (a tried)", got)
	}
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after PopExcept skipped a = %s, want a (still first in the queue)", got)
	}
	// Unknown IPs in except change nothing; several tried IPs are skipped.
	if got := e.popExcept("t", "c", "10.9.9.9:1"); got != "d" {
		t.Fatalf("PopExcept(c, unknown) = %s, want d", got)
	}
	// Only c is free, and it was tried: a, b and d are in use and may come
	// back, so c is not handed out again.
	if addr, err := e.popExcept0("t", "c"); !errors.Is(err, pool.ErrNoIP) {
		t.Fatalf("PopExcept(c, 0) with only c free = %q, %v; want %v", addr, err, pool.ErrNoIP)
	}
	if got := e.pop("t"); got != "c" {
		t.Fatalf("Pop = %s, want c (a PopExcept that skipped it did not keep it)", got)
	}
	e.empty("t")
}

// With an IP it may not take free and an untried one in use, a PopExcept
// waits for the untried one (through its cooldown), meanwhile the tried IP
// serves others; if none comes in time it gets ErrNoIP, not a tried IP.
func testExceptWaitsForUntried(t *testing.T, e *env) {
	e.seed("t", "a", "b")
	e.popN("t", 2)
	e.push("t", "a", e.now()) // tried and failed: free again, b in use

	start := time.Now()
	ch := e.goPopExcept("t", Tick, "a")
	e.blocked("t", 1)
	e.clock.Advance(Tick - Epsilon)
	if realBefore(start.Add(Tick)) {
		e.stillBlocked(ch, "a free but tried, b in use")
	}
	e.clock.Advance(Epsilon)
	if r := e.await(ch, "at the timeout"); !errors.Is(r.err, pool.ErrNoIP) {
		t.Fatalf("PopExcept(a) with b in use till the timeout = %v, want %v", r, pool.ErrNoIP)
	}

	ch = e.goPopExcept("t", forever, "a")
	e.blocked("t", 1)
	e.stillBlocked(ch, "a free but tried, b in use")
	// A later caller that may take a gets it: the waiter does not hold it.
	if got := e.popSoon("t"); got != "a" {
		t.Fatalf("Pop while a PopExcept(a) waits = %s, want a", got)
	}
	e.push("t", "a", e.now())
	e.stillBlocked(ch, "a back, b in use")
	readyAt := e.now().Add(Tick)
	e.push("t", "b", readyAt)
	e.clock.Advance(Tick - Epsilon)
	e.stillBlocked(ch, "b cooling")
	e.clock.Advance(Epsilon)
	if r := e.await(ch, "b cooled down"); r.err != nil || r.addr != "b" {
		t.Fatalf("PopExcept(a) waiter got %v, want IP \"b\"", r)
	}
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop = %s, want a", got)
	}
}

// Only when every IP outside quarantine was tried is one handed out
// again, as Pop would: the one free longest. Quarantined IPs do not count,
// and a waiter sees an untried IP leave for quarantine.
func testExceptReusesWhenAllTried(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c")
	if got := e.popExcept("t", "a", "b", "c"); got != "a" {
		t.Fatalf("PopExcept(a, b, c) with all tried = %s, want a (the head)", got)
	}
	e.push("t", "a", e.now()) // b, c, a
	e.quarantine("t", "c", e.now().Add(time.Hour))
	if got := e.popExcept("t", "b", "a"); got != "b" {
		t.Fatalf("PopExcept(b, a) with c quarantined = %s, want b (the head)", got)
	}
	e.push("t", "b", e.now()) // a, b

	// c is back in the pool (in use: it may come free), b is free but
	// tried: the waiter waits; when c goes back to quarantine, every IP
	// outside it was tried and the waiter takes b.
	if got, err := e.b.PopExpired(e.ctx, "t", e.now().Add(time.Hour)); err != nil || len(got) != 1 || got[0] != "c" {
		t.Fatalf("PopExpired = %v, %v; want [c]", got, err)
	}
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop = %s, want a", got)
	}
	ch := e.goPopExcept("t", forever, "a", "b")
	e.blocked("t", 1)
	e.stillBlocked(ch, "b free but tried, c in use")
	e.quarantine("t", "c", e.now().Add(time.Hour))
	if r := e.await(ch, "c quarantined"); r.err != nil || r.addr != "b" {
		t.Fatalf("PopExcept(a, b) waiter after c left = %v, want IP \"b\"", r)
	}

	// An IP in use marked by Hold counts until it is returned (into
	// quarantine); so does one no longer configured, until it leaves.
	// (The clock stays: a Redis backend would end the leases of IPs held
	// past its lease TTL.)
	e.push("t", "b", e.now())
	if inUse, err := e.b.Unquarantine(e.ctx, "t", "c"); err != nil || inUse {
		t.Fatalf("Unquarantine(c) = %v, %v", inUse, err)
	}
	if !e.hold("t", "c", e.now().Add(time.Hour)) {
		t.Fatal("Hold(c) of an IP in use: not marked")
	}
	ch = e.goPopExcept("t", forever, "a", "b") // a is still in use
	e.blocked("t", 1)
	e.stillBlocked(ch, "b free but tried, c in use (marked)")
	e.push("t", "c", e.now())
	if r := e.await(ch, "c returned into quarantine"); r.err != nil || r.addr != "b" {
		t.Fatalf("PopExcept(a, b) waiter after c went into quarantine = %v, want IP \"b\"", r)
	}
	e.isState("t", "c", pool.StateQuarantined, e.now().Add(time.Hour))

	// A cooling IP counts; held out of the pool (Hold), it no longer does.
	e.push("t", "b", e.now())
	e.push("t", "a", e.now())
	if inUse, err := e.b.Unquarantine(e.ctx, "t", "c"); err != nil || inUse {
		t.Fatalf("Unquarantine(c) = %v, %v", inUse, err)
	}
	e.push("t", "c", e.now().Add(time.Hour))
	ch = e.goPopExcept("t", forever, "a", "b")
	e.blocked("t", 1)
	e.stillBlocked(ch, "a and b free but tried, c cooling")
	e.hold("t", "c", e.now().Add(time.Minute))
	if r := e.await(ch, "c held out"); r.err != nil || r.addr != "b" {
		t.Fatalf("PopExcept(a, b) waiter after Hold(c) = %v, want IP \"b\"", r)
	}
}

// Waiters keep their FIFO order among the IPs each may take.
func testExceptFIFO(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c")
	e.popN("t", 3)
	w1 := e.goPopExcept("t", forever, "a")
	e.blocked("t", 1)
	w2 := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 2)
	w3 := e.goPopExcept("t", forever, "a")
	e.blocked("t", 3)
	e.push("t", "a", e.now())
	if r := e.await(w2, "a back"); r.err != nil || r.addr != "a" {
		t.Fatalf("Pop waiter got %v, want IP \"a\" (the PopExcept(a) waiters skip it)", r)
	}
	e.stillBlocked(w1, "only a came back")
	e.stillBlocked(w3, "only a came back")
	e.push("t", "b", e.now())
	if r := e.await(w1, "b back"); r.err != nil || r.addr != "b" {
		t.Fatalf("first PopExcept(a) waiter got %v, want IP \"b\"", r)
	}
	e.stillBlocked(w3, "b went to the first waiter")
	e.push("t", "c", e.now())
	if r := e.await(w3, "c back"); r.err != nil || r.addr != "c" {
		t.Fatalf("second PopExcept(a) waiter got %v, want IP \"c\"", r)
	}
	e.empty("t")
}
