package pooltest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// The per-IP control operations: Take, Hold, Unquarantine and State.

func (e *env) take(target, addr string) bool {
	e.t.Helper()
	ok, err := e.b.Take(e.ctx, target, addr)
	if err != nil {
		e.t.Fatalf("Take(%s, %s): %v", target, addr, err)
	}
	return ok
}

func (e *env) hold(target, addr string, until time.Time) bool {
	e.t.Helper()
	inUse, err := e.b.Hold(e.ctx, target, addr, until)
	if err != nil {
		e.t.Fatalf("Hold(%s, %s): %v", target, addr, err)
	}
	return inUse
}

func (e *env) state(target, addr string) pool.IPState {
	e.t.Helper()
	s, err := e.b.State(e.ctx, target, addr)
	if err != nil {
		e.t.Fatalf("State(%s, %s): %v", target, addr, err)
	}
	return s
}

// isState checks addr's state and, for cooling and quarantined IPs, its
// time.
func (e *env) isState(target, addr string, st pool.State, until time.Time) {
	e.t.Helper()
	s := e.state(target, addr)
	if s.State != st {
		e.t.Fatalf("%s is %s, want %s", addr, s.State, st)
	}
	if (st == pool.StateCooling || st == pool.StateQuarantined) && !s.Until.Equal(until) {
		e.t.Fatalf("%s is %s until %v, want until %v", addr, st, s.Until, until)
	}
}

func testTake(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c", "d")
	t0 := e.now()
	// An IP from the middle of the queue; the others keep their order.
	if !e.take("t", "b") {
		t.Fatal("Take(b) of an available IP = false")
	}
	e.isState("t", "b", pool.StateInUse, time.Time{})
	if e.take("t", "b") {
		t.Fatal("Take(b) of an IP in use = true")
	}
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after Take(b) = %s, want a", got)
	}
	// Pushed back, it cools down and queues like a popped IP.
	e.push("t", "b", t0.Add(time.Second))
	e.isState("t", "b", pool.StateCooling, t0.Add(time.Second))
	if e.take("t", "b") {
		t.Fatal("Take(b) of a cooling IP = true")
	}
	e.clock.Advance(time.Second - Epsilon)
	if e.take("t", "b") {
		t.Fatal("Take(b) just before its readyAt = true")
	}
	e.clock.Advance(Epsilon)
	if !e.take("t", "b") {
		t.Fatal("Take(b) at its readyAt = false")
	}
	e.push("t", "b", e.now())
	e.push("t", "a", e.now())
	if got, want := e.drain("t"), []string{"c", "d", "b", "a"}; !slices.Equal(got, want) {
		t.Fatalf("queue after Take and pushes = %v, want %v", got, want)
	}
	for _, a := range []string{"c", "d", "b", "a"} {
		e.push("t", a, e.now())
	}
	// The last one, and the only one.
	if !e.take("t", "a") || !e.take("t", "b") || !e.take("t", "c") || !e.take("t", "d") {
		t.Fatal("Take of every available IP failed")
	}
	e.empty("t")
	// Quarantined IPs are not taken.
	e.push("t", "a", e.now())
	e.hold("t", "a", e.now().Add(time.Hour))
	if e.take("t", "a") {
		t.Fatal("Take(a) of a quarantined IP = true")
	}
	if _, err := e.b.Take(e.ctx, "t", "nope"); !errors.Is(err, pool.ErrUnknownIP) {
		t.Fatalf("Take of an unknown IP: %v, want %v", err, pool.ErrUnknownIP)
	}
}

func testTakeYieldsToWaiters(t *testing.T, e *env) {
	e.seed("t", "a")
	a := e.pop("t")
	e.push("t", a, e.now().Add(time.Second))
	ch := e.goPop(e.ctx, "t", forever)
	e.blocked("t", 1)
	e.clock.Advance(time.Second)
	if e.take("t", "a") {
		t.Fatal("Take(a) while a caller waits for an IP = true")
	}
	if r := e.await(ch, "cooldown over"); r.err != nil || r.addr != "a" {
		t.Fatalf("waiter got %v, want IP \"a\"", r)
	}
}

func testHold(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c", "d")
	t0 := e.now()
	e.popN("t", 2) // a, b in use
	e.push("t", "b", t0.Add(time.Minute))
	// Available, cooling and in-use IPs.
	if e.hold("t", "c", t0.Add(10*time.Second)) {
		t.Fatal("Hold(c) of an available IP reports in use")
	}
	if e.hold("t", "b", t0.Add(20*time.Second)) {
		t.Fatal("Hold(b) of a cooling IP reports in use")
	}
	if !e.hold("t", "a", t0.Add(30*time.Second)) {
		t.Fatal("Hold(a) of an IP in use does not report it")
	}
	e.isState("t", "c", pool.StateQuarantined, t0.Add(10*time.Second))
	e.isState("t", "b", pool.StateQuarantined, t0.Add(20*time.Second))
	s := e.state("t", "a")
	if s.State != pool.StateInUse || !s.PendingQuarantine.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("a held while in use: %+v, want in use with pending quarantine until +30s", s)
	}
	if got := e.snapshot("t")["a"]; !sameState(got, s) {
		t.Fatalf("Snapshot lists a as %+v, State says %+v", got, s)
	}
	// b is out even after its cooldown; only d is left.
	e.clock.Advance(time.Minute)
	if got := e.drain("t"); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("pool holds %v, want [d]", got)
	}
	e.push("t", "d", e.now())
	// Held again: the new time wins, earlier or later.
	e.hold("t", "c", t0.Add(5*time.Second))
	e.isState("t", "c", pool.StateQuarantined, t0.Add(5*time.Second))
	if at, ok, err := e.b.NextExpiry(e.ctx, "t"); err != nil || !ok || !at.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("NextExpiry = %v, %v, %v; want +5s", at, ok, err)
	}
	// a's holder returns it while its time has not passed: quarantined.
	e.hold("t", "a", e.now().Add(time.Minute))
	e.push("t", "a", e.now())
	e.isState("t", "a", pool.StateQuarantined, e.now().Add(time.Minute))
	if s := e.state("t", "a"); !s.PendingQuarantine.IsZero() {
		t.Fatalf("a quarantined still shows a pending quarantine: %+v", s)
	}
	got, err := e.b.PopExpired(e.ctx, "t", e.now().Add(time.Minute))
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("PopExpired = %v, %v; want [a b c]", got, err)
	}
	for _, x := range got {
		e.push("t", x, e.now())
	}
	// Returned after its time: back as usual, with its cooldown.
	e.drain("t")
	e.hold("t", "a", e.now().Add(time.Second))
	e.clock.Advance(time.Second)
	e.push("t", "a", e.now().Add(time.Second))
	e.isState("t", "a", pool.StateCooling, e.now().Add(time.Second))
	// The holder's own Quarantine clears the mark and sets its own time.
	e.hold("t", "b", e.now().Add(time.Hour))
	if err := e.b.Quarantine(e.ctx, "t", "b", e.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	e.isState("t", "b", pool.StateQuarantined, e.now().Add(time.Minute))
	if _, err := e.b.Hold(e.ctx, "t", "nope", e.now()); !errors.Is(err, pool.ErrUnknownIP) {
		t.Fatalf("Hold of an unknown IP: %v, want %v", err, pool.ErrUnknownIP)
	}
}

func testUnquarantine(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c")
	t0 := e.now()
	e.hold("t", "a", t0.Add(time.Hour))
	if _, err := e.b.IncrFailures(e.ctx, "t", "a"); err != nil {
		t.Fatal(err)
	}
	inUse, err := e.b.Unquarantine(e.ctx, "t", "a")
	if err != nil || inUse {
		t.Fatalf("Unquarantine(a) = %v, %v; want false, nil", inUse, err)
	}
	// In use until pushed, failures left alone, out of the schedule.
	if s := e.state("t", "a"); s.State != pool.StateInUse || s.Failures != 1 {
		t.Fatalf("a after Unquarantine: %+v, want in use with 1 failure", s)
	}
	if _, ok, err := e.b.NextExpiry(e.ctx, "t"); err != nil || ok {
		t.Fatalf("NextExpiry after Unquarantine = %v, %v; want none", ok, err)
	}
	if got, err := e.b.PopExpired(e.ctx, "t", t0.Add(2*time.Hour)); err != nil || len(got) != 0 {
		t.Fatalf("PopExpired after Unquarantine = %v, %v; want none", got, err)
	}
	if got := e.drain("t"); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("pool holds %v, want [b c]", got)
	}
	e.push("t", "a", e.now())
	if got := e.pop("t"); got != "a" {
		t.Fatalf("Pop after pushing a = %s, want a", got)
	}
	// An in-use IP held: the mark goes, the holder keeps it.
	e.hold("t", "a", e.now().Add(time.Hour))
	if inUse, err := e.b.Unquarantine(e.ctx, "t", "a"); err != nil || !inUse {
		t.Fatalf("Unquarantine(a) of a held IP in use = %v, %v; want true, nil", inUse, err)
	}
	if s := e.state("t", "a"); s.State != pool.StateInUse || !s.PendingQuarantine.IsZero() {
		t.Fatalf("a after Unquarantine in use: %+v, want in use without a pending quarantine", s)
	}
	e.push("t", "a", e.now())
	e.isState("t", "a", pool.StateAvailable, time.Time{})
	// Not quarantined: available, cooling, in use.
	e.push("t", "b", e.now().Add(time.Minute))
	for _, x := range []string{"a", "b", "c"} {
		if _, err := e.b.Unquarantine(e.ctx, "t", x); !errors.Is(err, pool.ErrNotQuarantined) {
			t.Errorf("Unquarantine(%s) of a %s IP: %v, want %v", x, e.state("t", x).State, err, pool.ErrNotQuarantined)
		}
	}
	if _, err := e.b.Unquarantine(e.ctx, "t", "nope"); !errors.Is(err, pool.ErrUnknownIP) {
		t.Fatalf("Unquarantine of an unknown IP: %v, want %v", err, pool.ErrUnknownIP)
	}
}

func testState(t *testing.T, e *env) {
	e.seed("t", "a", "b", "c", "d")
	t0 := e.now()
	e.popN("t", 2)
	e.push("t", "b", t0.Add(time.Second))
	e.hold("t", "c", t0.Add(time.Minute))
	if _, err := e.b.IncrFailures(e.ctx, "t", "c"); err != nil {
		t.Fatal(err)
	}
	snap := e.snapshot("t")
	for _, x := range []string{"a", "b", "c", "d"} {
		if got := e.state("t", x); !sameState(got, snap[x]) {
			t.Errorf("State(%s) = %+v, Snapshot lists %+v", x, got, snap[x])
		}
	}
	if _, err := e.b.State(e.ctx, "t", "nope"); !errors.Is(err, pool.ErrUnknownIP) {
		t.Fatalf("State of an unknown IP: %v, want %v", err, pool.ErrUnknownIP)
	}
}

func sameState(a, b pool.IPState) bool {
	return a.Addr == b.Addr && a.State == b.State && a.Until.Equal(b.Until) && a.Failures == b.Failures &&
		a.PendingQuarantine.Equal(b.PendingQuarantine)
}
