// Package pooltest is the contract every pool.Backend must meet. A backend
// package runs it from its own tests:
//
//	func TestContract(t *testing.T) {
//		pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
//			b := memory.New(clock)
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
//
// The suite talks to the backend only through pool.Backend. Its time is a
// *pool.FakeClock, and a backend must judge readiness (readyAt, "now") by the
// clock it is given. Waiting may use real time, as a Redis backend that
// blocks or polls would: a Pop's timeout may run out in real time rather than
// when the fake clock passes it, and a blocked Pop may take a little real
// time to notice that the clock moved. So the suite waits for results rather
// than expecting them at once, never waits more than Tick for a timeout, and
// checks that a Pop has not timed out only while that is also true in real
// time.
//
// A backend that also implements WaitCounter lets the suite know exactly
// when a caller is blocked in Pop; without it the suite waits Settle.
package pooltest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// WaitCounter is optionally implemented by a backend under test: Waiting
// reports how many callers are blocked in Pop for target, counting a caller
// only once its wait (including its timeout) is registered.
type WaitCounter interface {
	Waiting(target string) int
}

const (
	// Tick is the Pop timeout the suite lets run out, so the longest it
	// waits for a backend whose timeouts run in real time.
	Tick = 100 * time.Millisecond
	// Epsilon is "just before" a deadline. Backends must keep time to at
	// least this precision (Redis scores in milliseconds do).
	Epsilon = time.Millisecond
	// Settle is how long the suite lets a Pop block before it assumes the
	// caller is queued, for backends that are not a WaitCounter.
	Settle = 50 * time.Millisecond
	// failsafe bounds any wait for something that must happen promptly;
	// reaching it is a test failure, never part of a passing run.
	failsafe = 5 * time.Second
	// forever is a Pop timeout that the suite never lets run out.
	forever = time.Hour
	// quiet is how long the suite watches for something that must not
	// happen. It can only make a broken backend pass, never a correct one fail.
	quiet = 10 * time.Millisecond
)

// Run runs the contract suite, one subtest per behaviour. newBackend must
// return a fresh, empty backend that takes its time from clock and is
// cleaned up through t.Cleanup; the cleanup must tolerate the suite having
// closed the backend already.
func Run(t *testing.T, newBackend func(t *testing.T, clock pool.Clock) pool.Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, *env)
	}{
		{"SeedOrder", testSeedOrder},
		{"SeedDuplicates", testSeedDuplicates},
		{"RotationFIFO", testRotationFIFO},
		{"PopWaitsForPush", testPopWaitsForPush},
		{"PopTimeout", testPopTimeout},
		{"PopZeroTimeoutNeverBlocks", testPopZeroTimeout},
		{"PopContextCanceled", testPopContextCanceled},
		{"PopContextDone", testPopContextDone},
		{"PushReadyAt", testPushReadyAt},
		{"PushReadyAtServesWaiter", testPushReadyAtServesWaiter},
		{"WaiterServedAtCooldownEnd", testWaiterServedAtCooldownEnd},
		{"CooledInReadyOrder", testCooledInReadyOrder},
		{"WaitersFIFO", testWaitersFIFO},
		{"PushIdempotent", testPushIdempotent},
		{"PushIdempotentConcurrent", testPushIdempotentConcurrent},
		{"Failures", testFailures},
		{"Quarantine", testQuarantine},
		{"QuarantineConcurrentPopExpired", testQuarantineConcurrentPopExpired},
		{"SeedReconcile", testSeedReconcile},
		{"SeedServesWaiter", testSeedServesWaiter},
		{"SeedEmpty", testSeedEmpty},
		{"Snapshot", testSnapshot},
		{"Take", testTake},
		{"TakeYieldsToWaiters", testTakeYieldsToWaiters},
		{"ExceptSkipsTried", testExceptSkipsTried},
		{"ExceptWaitsForUntried", testExceptWaitsForUntried},
		{"ExceptReusesWhenAllTried", testExceptReusesWhenAllTried},
		{"ExceptFIFO", testExceptFIFO},
		{"Hold", testHold},
		{"Unquarantine", testUnquarantine},
		{"State", testState},
		{"Close", testClose},
		{"UnknownTarget", testUnknownTarget},
		{"TargetsIndependent", testTargetsIndependent},
		{"Concurrency", testConcurrency},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := pool.NewFakeClock(time.Now().Truncate(time.Millisecond))
			b := newBackend(t, clock)
			if b == nil {
				t.Fatal("newBackend returned nil")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			t.Cleanup(cancel)
			tc.fn(t, &env{t: t, ctx: ctx, b: b, clock: clock})
		})
	}
}

// env is one subtest's backend, clock and helpers.
type env struct {
	t     *testing.T
	ctx   context.Context
	b     pool.Backend
	clock *pool.FakeClock
}

type popResult struct {
	addr string
	err  error
}

func (r popResult) String() string {
	if r.err != nil {
		return fmt.Sprintf("error %q", r.err)
	}
	return fmt.Sprintf("IP %q", r.addr)
}

func (e *env) seed(target string, addrs ...string) {
	e.t.Helper()
	if err := e.b.Seed(e.ctx, target, addrs); err != nil {
		e.t.Fatalf("Seed(%s, %v): %v", target, addrs, err)
	}
}

// pop0 is Pop with timeout 0, which must return at once.
func (e *env) pop0(target string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, failsafe)
	defer cancel()
	return e.b.Pop(ctx, target, 0)
}

// pop takes an IP that must be available now, without waiting.
func (e *env) pop(target string) string {
	e.t.Helper()
	addr, err := e.pop0(target)
	if err != nil {
		e.t.Fatalf("Pop(%s, 0): %v, want an IP", target, err)
	}
	return addr
}

// popSoon takes an IP that must be available now, allowing a blocked
// backend a moment to notice.
func (e *env) popSoon(target string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, failsafe)
	defer cancel()
	addr, err := e.b.Pop(ctx, target, 2*Tick)
	if err != nil {
		e.t.Fatalf("Pop(%s): %v, want an IP", target, err)
	}
	return addr
}

// popN takes n IPs with pop and returns them in order.
func (e *env) popN(target string, n int) []string {
	e.t.Helper()
	out := make([]string, n)
	for i := range out {
		out[i] = e.pop(target)
	}
	return out
}

// empty checks that target has no IP to hand out now.
func (e *env) empty(target string) {
	e.t.Helper()
	if addr, err := e.pop0(target); !errors.Is(err, pool.ErrNoIP) {
		e.t.Fatalf("Pop(%s, 0) = %q, %v; want %v", target, addr, err, pool.ErrNoIP)
	}
}

// drain pops with timeout 0 until the pool is empty and returns the IPs in
// the order they came.
func (e *env) drain(target string) []string {
	e.t.Helper()
	var out []string
	for {
		addr, err := e.pop0(target)
		if errors.Is(err, pool.ErrNoIP) {
			return out
		}
		if err != nil {
			e.t.Fatalf("Pop(%s, 0): %v", target, err)
		}
		if slices.Contains(out, addr) {
			e.t.Fatalf("Pop(%s) handed out %s twice", target, addr)
		}
		out = append(out, addr)
		if len(out) > 10000 {
			e.t.Fatalf("Pop(%s) never runs dry", target)
		}
	}
}

func (e *env) push(target, addr string, readyAt time.Time) {
	e.t.Helper()
	if err := e.b.Push(e.ctx, target, addr, readyAt); err != nil {
		e.t.Fatalf("Push(%s, %s): %v", target, addr, err)
	}
}

func (e *env) now() time.Time { return e.clock.Now() }

// goPop starts a Pop and returns where its result arrives. The Pop's
// context ends with the subtest, so a stuck Pop cannot outlive it.
func (e *env) goPop(ctx context.Context, target string, timeout time.Duration) <-chan popResult {
	ch := make(chan popResult, 1)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	e.t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		addr, err := e.b.Pop(ctx, target, timeout)
		ch <- popResult{addr, err}
	})
	return ch
}

// blocked returns once n callers are blocked in Pop for target.
func (e *env) blocked(target string, n int) {
	e.t.Helper()
	wc, ok := e.b.(WaitCounter)
	if !ok {
		time.Sleep(Settle)
		return
	}
	deadline := time.Now().Add(failsafe)
	for wc.Waiting(target) != n {
		if time.Now().After(deadline) {
			e.t.Fatalf("Waiting(%s) = %d, want %d", target, wc.Waiting(target), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// await returns the result of a Pop that must end promptly.
func (e *env) await(ch <-chan popResult, what string) popResult {
	e.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(failsafe):
		e.t.Fatalf("%s: Pop still blocked after %v", what, failsafe)
		return popResult{}
	}
}

// stillBlocked checks that a Pop has not returned.
func (e *env) stillBlocked(ch <-chan popResult, what string) {
	e.t.Helper()
	select {
	case r := <-ch:
		e.t.Fatalf("%s: Pop returned %v, want it still blocked", what, r)
	case <-time.After(quiet):
	}
}

// realBefore reports whether the wall clock is still before at: only then
// is it fair to check that a timeout counted in real time has not run out.
func realBefore(at time.Time) bool { return time.Now().Add(quiet).Before(at) }

func testSeedOrder(t *testing.T, e *env) {
	addrs := []string{"10.0.0.5:80", "10.0.0.1:80", "10.0.0.9:80", "10.0.0.3:80", "10.0.0.7:80"}
	e.seed("t", addrs...)
	if got := e.popN("t", len(addrs)); !slices.Equal(got, addrs) {
		t.Fatalf("pop order %v, want seed order %v", got, addrs)
	}
	e.empty("t")
}

func testSeedDuplicates(t *testing.T, e *env) {
	e.seed("t", "a", "b", "a", "c", "b")
	e.seed("t", "a", "b", "c") // the same set again adds nothing
	if got, want := e.drain("t"), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("pool holds %v, want %v", got, want)
	}
}

func testRotationFIFO(t *testing.T, e *env) {
	addrs := []string{"a", "b", "c", "d"}
	e.seed("t", addrs...)
	// Each IP goes back to the end of the queue: three full rounds.
	var got []string
	for range 3 * len(addrs) {
		a := e.pop("t")
		got = append(got, a)
		e.push("t", a, e.now())
	}
	want := slices.Concat(addrs, addrs, addrs)
	if !slices.Equal(got, want) {
		t.Fatalf("rotation %v, want %v", got, want)
	}
	// Returned out of order, they come back in the order they returned.
	e.popN("t", 4)
	for _, a := range []string{"c", "a", "d", "b"} {
		e.push("t", a, e.now())
	}
	if got, want := e.popN("t", 4), []string{"c", "a", "d", "b"}; !slices.Equal(got, want) {
		t.Fatalf("after returns c,a,d,b popped %v, want %v", got, want)
	}
}

func testPopWaitsForPush(t *testing.T, e *env) {
	e.seed("t", "a")
	a := e.pop("t")
	ch := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 1)
	e.stillBlocked(ch, "pool empty")
	e.push("t", a, e.now())
	if r := e.await(ch, "after push"); r.err != nil || r.addr != "a" {
		t.Fatalf("waiter got %v, want IP \"a\"", r)
	}
	e.empty("t")
}

func testPopTimeout(t *testing.T, e *env) {
	e.seed("t", "a")
	e.pop("t")
	start := time.Now()
	ch := e.goPop(e.ctx, "t", Tick)
	e.blocked("t", 1)
	e.clock.Advance(Tick - Epsilon)
	if realBefore(start.Add(Tick)) {
		e.stillBlocked(ch, "just before the timeout")
	}
	e.clock.Advance(Epsilon)
	if r := e.await(ch, "at the timeout"); !errors.Is(r.err, pool.ErrNoIP) {
		t.Fatalf("timed-out Pop = %v, want %v", r, pool.ErrNoIP)
	}
	// The timed-out caller left the queue: a returned IP is not lost to it.
	e.push("t", "a", e.now())
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after timeout and push = %q, want a", got)
	}
}

func testPopZeroTimeout(t *testing.T, e *env) {
	e.seed("t", "a")
	e.pop("t")
	for _, timeout := range []time.Duration{0, -time.Second} {
		ch := e.goPop(e.ctx, "t", timeout)
		// No clock advance: a Pop that waited at all would never return.
		select {
		case r := <-ch:
			if !errors.Is(r.err, pool.ErrNoIP) {
				t.Fatalf("Pop(timeout %v) on empty pool = %v, want %v", timeout, r, pool.ErrNoIP)
			}
		case <-time.After(failsafe):
			t.Fatalf("Pop(timeout %v) blocked", timeout)
		}
	}
	// Nor does it leave anything queued that could swallow an IP.
	e.push("t", "a", e.now())
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop = %q, want a", got)
	}
}

func testPopContextCanceled(t *testing.T, e *env) {
	e.seed("t", "a")
	e.pop("t")
	ctx, cancel := context.WithCancel(e.ctx)
	ch := e.goPop(ctx, "t", forever)
	e.blocked("t", 1)
	e.stillBlocked(ch, "before cancel")
	cancel()
	if r := e.await(ch, "after cancel"); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("canceled Pop = %v, want %v", r, context.Canceled)
	}
	// The canceled caller must not receive (and lose) the next IP.
	e.push("t", "a", e.now())
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after cancel and push = %q, want a", got)
	}
}

func testPopContextDone(t *testing.T, e *env) {
	e.seed("t", "a")
	e.pop("t")
	ctx, cancel := context.WithDeadline(e.ctx, time.Now().Add(-time.Second))
	defer cancel()
	ch := e.goPop(ctx, "t", forever)
	if r := e.await(ch, "ctx already past deadline"); !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("Pop with expired ctx = %v, want %v", r, context.DeadlineExceeded)
	}
}

func testPushReadyAt(t *testing.T, e *env) {
	e.seed("t", "a", "b")
	a := e.pop("t")
	readyAt := e.now().Add(Tick)
	e.push("t", a, readyAt)
	if got := e.pop("t"); got != "b" {
		t.Fatalf("Pop = %q, want b (a cools down)", got)
	}
	e.empty("t")
	e.clock.Advance(Tick - Epsilon)
	e.empty("t")
	e.clock.Advance(Epsilon)
	if got := e.popSoon("t"); got != "a" {
		t.Fatalf("Pop at readyAt = %q, want a", got)
	}
	// A readyAt in the past means available now.
	e.push("t", "a", e.now().Add(-time.Hour))
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after push with past readyAt = %q, want a", got)
	}
}

func testPushReadyAtServesWaiter(t *testing.T, e *env) {
	e.seed("t", "a")
	a := e.pop("t")
	ch := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 1)
	readyAt := e.now().Add(Tick)
	e.push("t", a, readyAt)
	e.clock.Advance(Tick - Epsilon)
	e.stillBlocked(ch, "before readyAt")
	e.clock.Advance(Epsilon)
	if r := e.await(ch, "at readyAt"); r.err != nil || r.addr != "a" {
		t.Fatalf("waiter got %v, want IP \"a\"", r)
	}
}

func testWaiterServedAtCooldownEnd(t *testing.T, e *env) {
	// The IP was cooling before anyone waited for it.
	e.seed("t", "a")
	a := e.pop("t")
	e.push("t", a, e.now().Add(Tick))
	ch := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 1)
	e.clock.Advance(Tick - Epsilon)
	e.stillBlocked(ch, "before readyAt")
	e.clock.Advance(Epsilon)
	if r := e.await(ch, "at readyAt"); r.err != nil || r.addr != "a" {
		t.Fatalf("waiter got %v, want IP \"a\"", r)
	}
}

func testCooledInReadyOrder(t *testing.T, e *env) {
	// The IP that has been free longest goes first: among cooled-down IPs
	// that is the one whose readyAt came first, whatever the push order.
	e.seed("t", "a", "b", "c", "d")
	e.popN("t", 4)
	now := e.now()
	e.push("t", "a", now.Add(3*Tick/4))
	e.push("t", "b", now.Add(Tick/4))
	e.push("t", "c", now.Add(Tick/2))
	e.push("t", "d", now.Add(Tick/4))
	e.clock.Advance(Tick)
	got := []string{e.popSoon("t"), e.popSoon("t"), e.popSoon("t"), e.popSoon("t")}
	if want := []string{"b", "d", "c", "a"}; !slices.Equal(got, want) {
		t.Fatalf("cooled IPs popped as %v, want %v", got, want)
	}
	// An IP whose cooldown ended before another came back (or joined) goes
	// first, though no one looked at the pool in between.
	e.push("t", "a", e.now().Add(Tick/2))
	e.clock.Advance(Tick)
	e.push("t", "b", e.now())
	e.seed("t", "a", "b", "c", "d", "e")
	if got, want := e.drain("t"), []string{"a", "b", "e"}; !slices.Equal(got, want) {
		t.Fatalf("pool holds %v in this order, want %v", got, want)
	}
}

func testWaitersFIFO(t *testing.T, e *env) {
	addrs := []string{"a", "b", "c", "d"}
	e.seed("t", addrs...)
	e.popN("t", len(addrs))
	chs := make([]<-chan popResult, len(addrs))
	for i := range chs {
		chs[i] = e.goPop(e.ctx, "t", forever)
		e.blocked("t", i+1)
	}
	// One IP at a time: each must go to the waiter that came first.
	for i, a := range addrs {
		e.push("t", a, e.now())
		if r := e.await(chs[i], fmt.Sprintf("waiter %d", i)); r.err != nil || r.addr != a {
			t.Fatalf("waiter %d got %v, want IP %q", i, r, a)
		}
		for _, later := range chs[i+1:] {
			select {
			case r := <-later:
				t.Fatalf("a later waiter got %v before its turn", r)
			default:
			}
		}
	}
	// The same with several IPs arriving at once, through a cooldown.
	chs = chs[:0]
	for i := range 3 {
		chs = append(chs, e.goPop(e.ctx, "t", forever))
		e.blocked("t", i+1)
	}
	readyAt := e.now().Add(Tick)
	for _, a := range []string{"c", "a", "d"} {
		e.push("t", a, readyAt)
	}
	e.clock.Advance(Tick)
	for i, want := range []string{"c", "a", "d"} {
		if r := e.await(chs[i], fmt.Sprintf("waiter %d", i)); r.err != nil || r.addr != want {
			t.Fatalf("waiter %d got %v, want IP %q", i, r, want)
		}
	}
}

func testPushIdempotent(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c")
	a := e.pop("t")
	e.push("t", a, e.now())
	e.push("t", a, e.now())                // twice
	e.push("t", "b", e.now())              // b was never handed out
	e.push("t", a, e.now().Add(time.Hour)) // and once more, later
	if got, want := e.drain("t"), []string{"b", "c", "a"}; !slices.Equal(got, want) {
		t.Fatalf("pool after double push = %v, want %v", got, want)
	}
	// Pushing again what is cooling neither duplicates it nor hands it out early.
	e.push("t", "b", e.now().Add(Tick))
	e.push("t", "b", e.now().Add(Tick))
	e.push("t", "b", e.now())
	if addr, err := e.pop0("t"); err == nil && addr == "b" {
		t.Fatal("b handed out while still cooling: a second push overrode its readyAt")
	}
	e.clock.Advance(Tick)
	e.push("t", "a", e.now())
	e.push("t", "c", e.now())
	got := []string{e.popSoon("t"), e.popSoon("t"), e.popSoon("t")}
	slices.Sort(got)
	if want := []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("pool holds %v, want %v", got, want)
	}
	e.empty("t")
}

func testPushIdempotentConcurrent(t *testing.T, e *env) {
	e.seed("t", "a", "b")
	for round := range 20 {
		addrs := e.popN("t", 2)
		var wg sync.WaitGroup
		for range 8 {
			for _, a := range addrs {
				wg.Go(func() {
					if err := e.b.Push(e.ctx, "t", a, e.now()); err != nil {
						t.Errorf("Push(%s): %v", a, err)
					}
				})
			}
		}
		wg.Wait()
		got := e.drain("t")
		slices.Sort(got)
		if !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("round %d: after 8 concurrent pushes each, pool holds %v, want [a b]", round, got)
		}
		for _, a := range got {
			e.push("t", a, e.now())
		}
	}
}

func testFailures(t *testing.T, e *env) {
	e.seed("t", "a", "b")
	incr := func(addr string, want int) {
		t.Helper()
		n, err := e.b.IncrFailures(e.ctx, "t", addr)
		if err != nil || n != want {
			t.Fatalf("IncrFailures(%s) = %d, %v; want %d", addr, n, err, want)
		}
	}
	for i := 1; i <= 10; i++ {
		incr("a", i)
	}
	incr("b", 1)
	if err := e.b.ResetFailures(e.ctx, "t", "a"); err != nil {
		t.Fatalf("ResetFailures: %v", err)
	}
	incr("a", 1)
	incr("b", 2)
	// Counts survive a use of the IP (pop and push).
	e.drain("t")
	e.push("t", "a", e.now())
	e.push("t", "b", e.now())
	incr("a", 2)
	states := e.snapshot("t")
	if states["a"].Failures != 2 || states["b"].Failures != 2 {
		t.Fatalf("Snapshot failures a=%d b=%d, want 2 and 2", states["a"].Failures, states["b"].Failures)
	}
	if err := e.b.ResetFailures(e.ctx, "t", "b"); err != nil {
		t.Fatalf("ResetFailures: %v", err)
	}
	if err := e.b.ResetFailures(e.ctx, "t", "b"); err != nil { // already zero
		t.Fatalf("ResetFailures: %v", err)
	}
	incr("b", 1)
}

func testQuarantine(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c")
	if at, ok, err := e.b.NextExpiry(e.ctx, "t"); err != nil || ok {
		t.Fatalf("NextExpiry with nothing quarantined = %v, %v, %v; want none", at, ok, err)
	}
	if got, err := e.b.PopExpired(e.ctx, "t", e.now().Add(time.Hour)); err != nil || len(got) != 0 {
		t.Fatalf("PopExpired with nothing quarantined = %v, %v", got, err)
	}
	t0 := e.now()
	a := e.pop("t") // in use when quarantined, as the pool does it
	quarantine := func(addr string, until time.Time) {
		t.Helper()
		if err := e.b.Quarantine(e.ctx, "t", addr, until); err != nil {
			t.Fatalf("Quarantine(%s): %v", addr, err)
		}
	}
	quarantine(a, t0.Add(20*time.Second))
	quarantine("b", t0.Add(10*time.Second)) // available when quarantined
	next := func(want time.Time, wantOK bool) {
		t.Helper()
		at, ok, err := e.b.NextExpiry(e.ctx, "t")
		if err != nil || ok != wantOK || (ok && !at.Equal(want)) {
			t.Fatalf("NextExpiry = %v, %v, %v; want %v, %v", at, ok, err, want, wantOK)
		}
	}
	expired := func(now time.Time, want ...string) {
		t.Helper()
		got, err := e.b.PopExpired(e.ctx, "t", now)
		if err != nil {
			t.Fatalf("PopExpired(%v): %v", now.Sub(t0), err)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("PopExpired(t0+%v) = %v, want %v", now.Sub(t0), got, want)
		}
	}
	next(t0.Add(10*time.Second), true)
	// Quarantined IPs are out of the pool whatever the time.
	e.clock.Advance(time.Hour)
	if got := e.drain("t"); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("pool with a and b quarantined holds %v, want [c]", got)
	}
	expired(t0.Add(10*time.Second - Epsilon))
	next(t0.Add(10*time.Second), true)
	expired(t0.Add(10*time.Second), "b")
	expired(t0.Add(10 * time.Second))
	next(t0.Add(20*time.Second), true)
	// An expired IP is in use until pushed back: the pool resets its count
	// and fires hooks in between.
	e.empty("t")
	e.push("t", "b", e.now())
	if got := e.pop("t"); got != "b" {
		t.Fatalf("Pop after pushing released b = %q, want b", got)
	}
	// Quarantining again moves the release time, either way.
	quarantine(a, t0.Add(30*time.Second))
	next(t0.Add(30*time.Second), true)
	expired(t0.Add(25 * time.Second))
	quarantine(a, t0.Add(5*time.Second))
	next(t0.Add(5*time.Second), true)
	expired(t0.Add(time.Hour), "a")
	next(time.Time{}, false)
	expired(t0.Add(time.Hour))
	e.push("t", "a", e.now())
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after pushing released a = %q, want a", got)
	}
	// Several expiring at once come out in one call.
	quarantine("a", t0.Add(time.Second))
	quarantine("b", t0.Add(2*time.Second))
	quarantine("c", t0.Add(3*time.Second))
	next(t0.Add(time.Second), true)
	expired(t0.Add(2*time.Second), "a", "b")
	expired(t0.Add(2 * time.Second))
	next(t0.Add(3*time.Second), true)
}

func testQuarantineConcurrentPopExpired(t *testing.T, e *env) {
	const n = 200
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.%d.%d:8080", i/256, i%256)
	}
	e.seed("t", addrs...)
	t0 := e.now()
	for i, a := range addrs {
		if err := e.b.Quarantine(e.ctx, "t", a, t0.Add(time.Duration(i%10+1)*time.Second)); err != nil {
			t.Fatalf("Quarantine(%s): %v", a, err)
		}
	}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	// Callers race at several times, each time later than the last.
	for step := 1; step <= 11; step++ {
		now := t0.Add(time.Duration(step) * time.Second)
		for range 8 {
			wg.Go(func() {
				got, err := e.b.PopExpired(e.ctx, "t", now)
				if err != nil {
					t.Errorf("PopExpired: %v", err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, a := range got {
					seen[a]++
				}
			})
		}
	}
	wg.Wait()
	for _, a := range addrs {
		if seen[a] != 1 {
			t.Errorf("%s returned by %d PopExpired calls, want exactly 1", a, seen[a])
		}
	}
	if len(seen) != n {
		t.Errorf("PopExpired returned %d distinct IPs, want %d", len(seen), n)
	}
	if _, ok, err := e.b.NextExpiry(e.ctx, "t"); err != nil || ok {
		t.Fatalf("NextExpiry after all released = %v, %v", ok, err)
	}
}

func (e *env) snapshot(target string) map[string]pool.IPState {
	e.t.Helper()
	list, err := e.b.Snapshot(e.ctx, target)
	if err != nil {
		e.t.Fatalf("Snapshot(%s): %v", target, err)
	}
	m := make(map[string]pool.IPState, len(list))
	for _, s := range list {
		if _, dup := m[s.Addr]; dup {
			e.t.Fatalf("Snapshot lists %s twice", s.Addr)
		}
		m[s.Addr] = s
	}
	return m
}

func (e *env) snapshotAddrs(target string) []string {
	e.t.Helper()
	var out []string
	for a := range e.snapshot(target) {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func testSeedReconcile(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c", "d", "e", "f")
	e.popN("t", 3) // a, b, c in use
	if err := e.b.Quarantine(e.ctx, "t", "e", e.now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.push("t", "c", e.now().Add(time.Hour)) // c cooling
	if _, err := e.b.IncrFailures(e.ctx, "t", "d"); err != nil {
		t.Fatal(err)
	}
	// Drop in-use a and b, cooling c, available d, quarantined e; keep f; add g.
	e.seed("t", "f", "g")
	// In-use IPs that left may still be listed until pushed; the rest are gone.
	for a := range e.snapshot("t") {
		if !slices.Contains([]string{"a", "b", "f", "g"}, a) {
			t.Errorf("Snapshot after reseed lists removed %s", a)
		}
	}
	if _, ok, err := e.b.NextExpiry(e.ctx, "t"); err != nil || ok {
		t.Errorf("NextExpiry after removing the quarantined IP = %v, %v; want none", ok, err)
	}
	// b comes back into the set while still in use: it stays.
	e.seed("t", "b", "f", "g")
	e.push("t", "a", e.now())
	e.push("t", "b", e.now())
	e.clock.Advance(2 * time.Hour)
	got := e.drain("t")
	slices.Sort(got)
	if want := []string{"b", "f", "g"}; !slices.Equal(got, want) {
		t.Fatalf("pool after reconcile holds %v, want %v", got, want)
	}
	if got, want := e.snapshotAddrs("t"), []string{"b", "f", "g"}; !slices.Equal(got, want) {
		t.Fatalf("Snapshot after reconcile lists %v, want %v", got, want)
	}
	// A removed IP that is added back later is handed out again.
	for _, a := range got {
		e.push("t", a, e.now())
	}
	e.seed("t", "b", "d", "f", "g")
	got = e.drain("t")
	slices.Sort(got)
	if want := []string{"b", "d", "f", "g"}; !slices.Equal(got, want) {
		t.Fatalf("pool after re-adding d holds %v, want %v", got, want)
	}
	// A push for an IP that left while in use does not bring it back later.
	e.seed("t", "b", "d", "f")
	e.push("t", "g", e.now())
	e.seed("t", "b", "d", "f")
	for _, a := range []string{"b", "d", "f"} {
		e.push("t", a, e.now())
	}
	got = e.drain("t")
	slices.Sort(got)
	if want := []string{"b", "d", "f"}; !slices.Equal(got, want) {
		t.Fatalf("pool after removing in-use g holds %v, want %v", got, want)
	}
}

func testSeedServesWaiter(t *testing.T, e *env) {
	e.seed("t", "a")
	e.pop("t")
	ch := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 1)
	e.seed("t", "a", "b")
	if r := e.await(ch, "after reseed with a new IP"); r.err != nil || r.addr != "b" {
		t.Fatalf("waiter got %v, want the new IP b", r)
	}
}

// testSeedEmpty: seeding an empty list removes every IP (the one in use
// drains), Pop waits (and times out with ErrNoIP, not ErrUnknownTarget),
// and a later Seed serves the waiters first come, first served.
func testSeedEmpty(t *testing.T, e *env) {
	e.seed("t", "a", "b")
	a := e.pop("t")
	e.seed("t")
	e.empty("t")
	if got := e.snapshotAddrs("t"); len(got) > 1 || (len(got) == 1 && got[0] != a) {
		t.Fatalf("Snapshot after seeding no IP lists %v; want at most the in-use %s", got, a)
	}
	first := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 1)
	second := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 2)
	// The removed IP in use comes back: it leaves, and serves nobody.
	e.push("t", a, e.now())
	e.stillBlocked(first, "after the removed IP in use was returned")
	if got := e.snapshotAddrs("t"); len(got) != 0 {
		t.Fatalf("Snapshot of a pool seeded with no IP lists %v after the drain", got)
	}
	if _, ok, err := e.b.NextExpiry(e.ctx, "t"); err != nil || ok {
		t.Fatalf("NextExpiry of an empty pool = %v, %v; want none", ok, err)
	}
	// A waiter with a timeout gets ErrNoIP when it runs out.
	start := time.Now()
	timed := e.goPop(e.ctx, "t", Tick)
	e.blocked("t", 3)
	e.clock.Advance(Tick - Epsilon)
	if realBefore(start.Add(Tick)) {
		e.stillBlocked(timed, "just before the timeout")
	}
	e.clock.Advance(Epsilon)
	if r := e.await(timed, "empty pool at the timeout"); !errors.Is(r.err, pool.ErrNoIP) {
		t.Fatalf("timed-out Pop on an empty pool = %v, want %v", r, pool.ErrNoIP)
	}
	// Restoring IPs serves the waiters in arrival order.
	e.seed("t", "c", "d")
	if r := e.await(first, "first waiter after restore"); r.err != nil || r.addr != "c" {
		t.Fatalf("first waiter got %v, want c", r)
	}
	if r := e.await(second, "second waiter after restore"); r.err != nil || r.addr != "d" {
		t.Fatalf("second waiter got %v, want d", r)
	}
	e.empty("t")
	e.push("t", "c", e.now())
	e.push("t", "d", e.now())
	got := e.drain("t")
	slices.Sort(got)
	if want := []string{"c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("pool after restore holds %v, want %v", got, want)
	}
	// A target first seeded with no IP exists, and takes IPs later.
	e.seed("u")
	e.empty("u")
	w := e.goPop(e.ctx, "u", forever)
	e.blocked("u", 1)
	e.seed("u", "x")
	if r := e.await(w, "waiter of a target seeded empty"); r.err != nil || r.addr != "x" {
		t.Fatalf("waiter got %v, want x", r)
	}
}

func testSnapshot(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c", "d", "e")
	t0 := e.now()
	e.popN("t", 3) // a, b, c
	e.push("t", "b", t0.Add(Tick))
	if err := e.b.Quarantine(e.ctx, "t", "c", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := e.b.IncrFailures(e.ctx, "t", "c"); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]pool.IPState{
		"a": {Addr: "a", State: pool.StateInUse},
		"b": {Addr: "b", State: pool.StateCooling, Until: t0.Add(Tick)},
		"c": {Addr: "c", State: pool.StateQuarantined, Until: t0.Add(time.Hour), Failures: 2},
		"d": {Addr: "d", State: pool.StateAvailable},
		"e": {Addr: "e", State: pool.StateAvailable},
	}
	got := e.snapshot("t")
	if len(got) != len(want) {
		t.Fatalf("Snapshot has %d IPs, want %d: %v", len(got), len(want), got)
	}
	for addr, w := range want {
		g := got[addr]
		if g.State != w.State || g.Failures != w.Failures {
			t.Errorf("%s: state %s failures %d, want %s failures %d", addr, g.State, g.Failures, w.State, w.Failures)
		}
		switch w.State {
		case pool.StateCooling, pool.StateQuarantined:
			if !g.Until.Equal(w.Until) {
				t.Errorf("%s: until %v, want %v", addr, g.Until, w.Until)
			}
		case pool.StateInUse:
			// Since when: some time around the pop.
			if d := g.Until.Sub(t0); d < -time.Minute || d > time.Minute {
				t.Errorf("%s: in use since %v, want about %v", addr, g.Until, t0)
			}
		}
	}
	// Not a moment before its cooldown is over is b available again.
	e.clock.Advance(Tick - Epsilon)
	if st := e.snapshot("t")["b"].State; st != pool.StateCooling {
		t.Errorf("b just before its readyAt is %s, want %s", st, pool.StateCooling)
	}
	e.clock.Advance(Epsilon)
	if st := e.snapshot("t")["b"].State; st != pool.StateAvailable {
		t.Errorf("b at its readyAt is %s, want %s", st, pool.StateAvailable)
	}
}

func testClose(t *testing.T, e *env) {
	e.seed("t1", "a")
	e.seed("t2", "b", "c")
	e.pop("t1")
	var chs []<-chan popResult
	for i := range 3 {
		chs = append(chs, e.goPop(e.ctx, "t1", forever))
		e.blocked("t1", i+1)
	}
	e.pop("t2")
	e.pop("t2")
	chs = append(chs, e.goPop(e.ctx, "t2", forever))
	e.blocked("t2", 1)
	if err := e.b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, ch := range chs {
		if r := e.await(ch, "after Close"); !errors.Is(r.err, pool.ErrClosed) {
			t.Errorf("waiter %d after Close got %v, want %v", i, r, pool.ErrClosed)
		}
	}
	// Later Pops fail at once, even with IPs to hand out.
	_ = e.b.Push(e.ctx, "t2", "b", e.now()) // may be refused; either way no Pop succeeds
	for _, timeout := range []time.Duration{0, forever} {
		ch := e.goPop(e.ctx, "t2", timeout)
		if r := e.await(ch, "Pop after Close"); !errors.Is(r.err, pool.ErrClosed) {
			t.Errorf("Pop(timeout %v) after Close = %v, want %v", timeout, r, pool.ErrClosed)
		}
	}
}

func testUnknownTarget(t *testing.T, e *env) {
	e.seed("known", "a")
	ctx, cancel := context.WithTimeout(e.ctx, failsafe)
	defer cancel()
	calls := map[string]func() error{
		"Pop": func() error { _, err := e.b.Pop(ctx, "nope", forever); return err },
		"Pop0": func() error {
			_, err := e.b.Pop(ctx, "nope", 0)
			return err
		},
		"Push":          func() error { return e.b.Push(ctx, "nope", "a", e.now()) },
		"IncrFailures":  func() error { _, err := e.b.IncrFailures(ctx, "nope", "a"); return err },
		"ResetFailures": func() error { return e.b.ResetFailures(ctx, "nope", "a") },
		"Quarantine":    func() error { return e.b.Quarantine(ctx, "nope", "a", e.now().Add(time.Hour)) },
		"PopExpired":    func() error { _, err := e.b.PopExpired(ctx, "nope", e.now()); return err },
		"NextExpiry":    func() error { _, _, err := e.b.NextExpiry(ctx, "nope"); return err },
		"Snapshot":      func() error { _, err := e.b.Snapshot(ctx, "nope"); return err },
		"State":         func() error { _, err := e.b.State(ctx, "nope", "a"); return err },
		"Take":          func() error { _, err := e.b.Take(ctx, "nope", "a"); return err },
		"Hold":          func() error { _, err := e.b.Hold(ctx, "nope", "a", e.now()); return err },
		"Unquarantine":  func() error { _, err := e.b.Unquarantine(ctx, "nope", "a"); return err },
	}
	names := make([]string, 0, len(calls))
	for name := range calls {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := calls[name](); !errors.Is(err, pool.ErrUnknownTarget) {
			t.Errorf("%s on unseeded target: %v, want %v", name, err, pool.ErrUnknownTarget)
		}
	}
	// None of that created the target or touched the known one.
	if _, err := e.b.Snapshot(e.ctx, "nope"); !errors.Is(err, pool.ErrUnknownTarget) {
		t.Errorf("Snapshot after calls on unseeded target: %v, want %v", err, pool.ErrUnknownTarget)
	}
	if got := e.drain("known"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("known target holds %v, want [a]", got)
	}
}

func testTargetsIndependent(t *testing.T, e *env) {
	// The same address in two targets is two IPs.
	e.seed("t1", "shared", "x")
	e.seed("t2", "shared", "y")
	if got := e.pop("t1"); got != "shared" {
		t.Fatalf("t1 Pop = %q, want shared", got)
	}
	if got := e.pop("t2"); got != "shared" {
		t.Fatalf("t2 Pop = %q, want shared (in use in t1 only)", got)
	}
	for range 3 {
		if _, err := e.b.IncrFailures(e.ctx, "t1", "shared"); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := e.b.IncrFailures(e.ctx, "t2", "shared"); err != nil || n != 1 {
		t.Fatalf("t2 IncrFailures = %d, %v; want 1", n, err)
	}
	if err := e.b.Quarantine(e.ctx, "t1", "x", e.now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := e.b.NextExpiry(e.ctx, "t2"); err != nil || ok {
		t.Fatalf("t2 NextExpiry = %v, %v; want none", ok, err)
	}
	if got, err := e.b.PopExpired(e.ctx, "t2", e.now().Add(time.Hour)); err != nil || len(got) != 0 {
		t.Fatalf("t2 PopExpired = %v, %v; want none", got, err)
	}
	// A waiter on t1 is not served by a push to t2.
	ch := e.goPop(e.ctx, "t1", forever)
	e.blocked("t1", 1)
	e.push("t2", "shared", e.now())
	e.stillBlocked(ch, "push to the other target")
	if got := e.drain("t2"); !slices.Equal(got, []string{"y", "shared"}) {
		t.Fatalf("t2 holds %v, want [y shared]", got)
	}
	e.push("t1", "shared", e.now())
	if r := e.await(ch, "push to own target"); r.err != nil || r.addr != "shared" {
		t.Fatalf("t1 waiter got %v, want IP \"shared\"", r)
	}
	// Reseeding one target leaves the other alone.
	e.seed("t2", "z")
	states := e.snapshot("t1")
	if _, ok := states["x"]; !ok || states["shared"].Failures != 3 {
		t.Fatalf("t1 after reseeding t2: %v", states)
	}
}

func testConcurrency(t *testing.T, e *env) {
	const (
		nIPs     = 16
		nWorkers = 32
		runFor   = 100 * time.Millisecond
	)
	addrs := make([]string, nIPs)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.1.0.%d:3128", i)
	}
	e.seed("t", addrs...)
	ctx, cancel := context.WithTimeout(e.ctx, failsafe)
	defer cancel()

	var (
		held     sync.Map // addr -> holder; an IP must never be held twice
		ops      atomic.Int64
		stop     atomic.Bool // workers and releaser stop
		done     atomic.Bool // clock stops, once workers are out of Pop
		wg       sync.WaitGroup
		clockWG  sync.WaitGroup
		holdOnce = func(addr, who string) {
			if prev, loaded := held.LoadOrStore(addr, who); loaded {
				t.Errorf("%s handed to %s while %s holds it", addr, who, prev)
			}
		}
	)
	// The fake clock moves on, so cooldowns end and fake timeouts fire.
	clockWG.Go(func() {
		for !done.Load() {
			e.clock.Advance(time.Millisecond)
			time.Sleep(200 * time.Microsecond)
		}
	})
	// Quarantined IPs are released and returned, as the pool does it.
	wg.Go(func() {
		for !stop.Load() {
			got, err := e.b.PopExpired(ctx, "t", e.clock.Now())
			if err != nil {
				t.Errorf("PopExpired: %v", err)
				return
			}
			for _, a := range got {
				holdOnce(a, "releaser")
				held.Delete(a)
				if err := e.b.Push(ctx, "t", a, e.clock.Now()); err != nil {
					t.Errorf("Push(%s): %v", a, err)
				}
			}
			time.Sleep(500 * time.Microsecond)
		}
	})
	// A prober and an operator: Take and return, quarantine IPs whatever
	// their state, release quarantined ones early.
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(99, 1))
		for !stop.Load() {
			addr := addrs[rng.IntN(nIPs)]
			var err error
			switch rng.IntN(4) {
			case 0, 1:
				var ok bool
				if ok, err = e.b.Take(ctx, "t", addr); ok {
					holdOnce(addr, "prober")
					held.Delete(addr)
					err = e.b.Push(ctx, "t", addr, e.clock.Now().Add(time.Millisecond))
				}
			case 2:
				_, err = e.b.Hold(ctx, "t", addr, e.clock.Now().Add(time.Duration(rng.IntN(3))*time.Millisecond))
			case 3:
				var inUse bool
				inUse, err = e.b.Unquarantine(ctx, "t", addr)
				if errors.Is(err, pool.ErrNotQuarantined) {
					err = nil
				} else if err == nil && !inUse {
					holdOnce(addr, "operator")
					held.Delete(addr)
					err = e.b.Push(ctx, "t", addr, e.clock.Now())
				}
			}
			if err != nil {
				t.Errorf("control of %s: %v", addr, err)
			}
			time.Sleep(200 * time.Microsecond)
		}
	})
	for w := range nWorkers {
		wg.Go(func() {
			who := fmt.Sprintf("worker %d", w)
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			var tried []string // odd workers retry with PopExcept
			for !stop.Load() {
				timeout := time.Duration(rng.IntN(5)) * time.Millisecond
				var addr string
				var err error
				if w%2 == 1 && len(tried) > 0 {
					addr, err = e.b.PopExcept(ctx, "t", timeout, tried)
				} else {
					addr, err = e.b.Pop(ctx, "t", timeout)
				}
				if errors.Is(err, pool.ErrNoIP) {
					continue
				}
				if tried = append(tried, addr); len(tried) > 3 {
					tried = tried[1:]
				}
				if err != nil {
					t.Errorf("%s: Pop: %v", who, err)
					return
				}
				holdOnce(addr, who)
				ops.Add(1)
				switch rng.IntN(20) {
				case 0:
					_, err = e.b.IncrFailures(ctx, "t", addr)
				case 1:
					err = e.b.ResetFailures(ctx, "t", addr)
				case 2:
					_, err = e.b.Snapshot(ctx, "t")
				}
				if err != nil {
					t.Errorf("%s: %v", who, err)
				}
				held.Delete(addr)
				if rng.IntN(50) == 0 {
					err = e.b.Quarantine(ctx, "t", addr, e.clock.Now().Add(time.Duration(rng.IntN(3))*time.Millisecond))
				} else {
					err = e.b.Push(ctx, "t", addr, e.clock.Now().Add(time.Duration(rng.IntN(3))*time.Millisecond))
				}
				if err != nil {
					t.Errorf("%s: return %s: %v", who, addr, err)
				}
			}
		})
	}
	time.Sleep(runFor)
	stop.Store(true)
	wg.Wait()
	done.Store(true)
	clockWG.Wait()
	if ops.Load() == 0 {
		t.Fatal("no Pop succeeded")
	}
	t.Logf("%d pops", ops.Load())

	// Nothing was lost or duplicated: release everything and count.
	e.clock.Advance(time.Hour)
	got, err := e.b.PopExpired(e.ctx, "t", e.now())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range got {
		e.push("t", a, e.now())
	}
	deadline := time.Now().Add(failsafe)
	var all []string
	for len(all) < nIPs && time.Now().Before(deadline) {
		all = append(all, e.drain("t")...)
		time.Sleep(time.Millisecond) // real-time backends: let cooldowns end
	}
	slices.Sort(all)
	want := slices.Clone(addrs)
	slices.Sort(want)
	if !slices.Equal(all, want) {
		t.Fatalf("after the run the pool holds %v, want %v", all, want)
	}
}
