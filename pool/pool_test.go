package pool_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// fixture is one pool over the memory backend, on a fake clock, recording
// its hook calls.
type fixture struct {
	t       *testing.T
	ctx     context.Context
	clock   *pool.FakeClock
	backend *memory.Backend
	pool    *pool.Pool

	mu     sync.Mutex
	events []string
}

func newFixture(t *testing.T, addrs []string, cfg pool.Config) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: pool.NewFakeClock(t0)}
	f.backend = memory.New(f.clock)
	f.pool = f.newPool(f.backend, addrs, cfg)
	return f
}

func (f *fixture) newPool(backend pool.Backend, addrs []string, cfg pool.Config) *pool.Pool {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	f.t.Cleanup(cancel)
	f.ctx = ctx
	p, err := pool.New(ctx, "t", addrs, backend, cfg, pool.Options{
		Clock:  f.clock,
		Logger: slog.New(slog.DiscardHandler),
		Hooks: pool.Hooks{
			Quarantined: func(addr string, until time.Time) {
				f.record("quarantined %s until %v", addr, until.Sub(t0))
			},
			Released: func(addr string) {
				f.record("released %s at %v", addr, f.clock.Now().Sub(t0))
			},
		},
	})
	if err != nil {
		f.t.Fatalf("pool.New: %v", err)
	}
	f.t.Cleanup(func() { p.Close(); backend.Close() })
	return p
}

func (f *fixture) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, fmt.Sprintf(format, args...))
}

// takeEvents returns the hook calls since the last call.
func (f *fixture) takeEvents() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ev := f.events
	f.events = nil
	return ev
}

func (f *fixture) state(addr string) pool.IPState {
	f.t.Helper()
	states, err := f.pool.Snapshot(f.ctx)
	if err != nil {
		f.t.Fatalf("Snapshot: %v", err)
	}
	for _, s := range states {
		if s.Addr == addr {
			return s
		}
	}
	f.t.Fatalf("Snapshot has no %s: %v", addr, states)
	return pool.IPState{}
}

type acquireResult struct {
	addr string
	err  error
}

// goAcquire starts an Acquire that is expected to block, and waits until it
// is queued in the backend (with its timeout armed).
func (f *fixture) goAcquire() <-chan acquireResult {
	f.t.Helper()
	n := f.backend.Waiting("t")
	ch := make(chan acquireResult, 1)
	ctx, cancel := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	f.t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		addr, err := f.pool.Acquire(ctx)
		ch <- acquireResult{addr, err}
	})
	f.waiting(n + 1)
	return ch
}

// waiting waits for n callers to be queued; it is exact because the backend
// queues and dequeues waiters under its lock, and the fake clock fires
// timers only inside Advance.
func (f *fixture) waiting(n int) {
	f.t.Helper()
	testenv.Eventually(f.t, 5*time.Second, func() error {
		if got := f.backend.Waiting("t"); got != n {
			return fmt.Errorf("Waiting = %d, want %d", got, n)
		}
		return nil
	})
}

func (f *fixture) await(ch <-chan acquireResult) acquireResult {
	f.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		f.t.Fatal("Acquire still blocked")
		return acquireResult{}
	}
}

func (f *fixture) notReturned(ch <-chan acquireResult) {
	f.t.Helper()
	select {
	case r := <-ch:
		f.t.Fatalf("Acquire returned %q, %v; want it still waiting", r.addr, r.err)
	default:
	}
}

// acquire0 is an Acquire that must return at once: with an IP free, or with
// ErrNoIP when MaxQueueWait is 0.
func (f *fixture) acquire0() (string, error) {
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	return f.pool.Acquire(ctx)
}

// step is one action or check in a policy scenario.
type step struct {
	desc string
	do   func(f *fixture)
}

// get acquires and wants addr.
func get(addr string) step {
	return step{"get " + addr, func(f *fixture) {
		got, err := f.acquire0()
		if err != nil || got != addr {
			f.t.Fatalf("Acquire = %q, %v; want %q", got, err, addr)
		}
	}}
}

// none acquires and wants ErrNoIP (MaxQueueWait is 0 in the scenarios).
func none() step {
	return step{"none", func(f *fixture) {
		if got, err := f.acquire0(); !errors.Is(err, pool.ErrNoIP) {
			f.t.Fatalf("Acquire = %q, %v; want %v", got, err, pool.ErrNoIP)
		}
	}}
}

func release(addr string, o pool.Outcome) step {
	name := "ok "
	if o == pool.Failure {
		name = "fail "
	}
	return step{name + addr, func(f *fixture) {
		if err := f.pool.Release(f.ctx, addr, o); err != nil {
			f.t.Fatalf("Release(%s): %v", addr, err)
		}
	}}
}

func ok(addr string) step { return release(addr, pool.Success) }

// blame counts a failure against addr after its release.
func blame(addr string) step {
	return step{"blame " + addr, func(f *fixture) {
		if err := f.pool.Blame(f.ctx, addr); err != nil {
			f.t.Fatalf("Blame(%s): %v", addr, err)
		}
	}}
}
func fail(addr string) step { return release(addr, pool.Failure) }

func advance(d time.Duration) step {
	return step{"advance " + d.String(), func(f *fixture) { f.clock.Advance(d) }}
}

// is checks addr's state and failure count.
func is(addr string, st pool.State, failures int) step {
	return step{fmt.Sprintf("%s is %s/%d", addr, st, failures), func(f *fixture) {
		s := f.state(addr)
		if s.State != st || s.Failures != failures {
			f.t.Fatalf("%s is %s with %d failures, want %s with %d", addr, s.State, s.Failures, st, failures)
		}
	}}
}

// events checks the hook calls since the last check.
func events(want ...string) step {
	return step{"events", func(f *fixture) {
		if got := f.takeEvents(); !slices.Equal(got, want) {
			f.t.Fatalf("hook calls %q, want %q", got, want)
		}
	}}
}

func TestPolicy(t *testing.T) {
	base := pool.Config{FailuresUntilQuarantine: 3, QuarantineTime: time.Minute}
	with := func(change func(*pool.Config)) pool.Config {
		c := base
		change(&c)
		return c
	}
	tests := []struct {
		name  string
		ips   []string
		cfg   pool.Config
		steps []step
	}{
		{
			name: "cooldown to the nanosecond",
			ips:  []string{"a"},
			cfg:  with(func(c *pool.Config) { c.MinRequestInterval = time.Second }),
			steps: []step{
				get("a"), ok("a"), none(), is("a", pool.StateCooling, 0),
				advance(time.Second - time.Nanosecond), none(), is("a", pool.StateCooling, 0),
				advance(time.Nanosecond), is("a", pool.StateAvailable, 0), get("a"),
			},
		},
		{
			name: "cooldown after a failure too",
			ips:  []string{"a"},
			cfg:  with(func(c *pool.Config) { c.MinRequestInterval = time.Second }),
			steps: []step{
				get("a"), fail("a"), none(), is("a", pool.StateCooling, 1),
				advance(time.Second - time.Nanosecond), none(),
				advance(time.Nanosecond), get("a"),
			},
		},
		{
			name: "rotation over all IPs",
			ips:  []string{"a", "b", "c"},
			cfg:  base,
			steps: []step{
				get("a"), ok("a"), get("b"), ok("b"), get("c"), ok("c"),
				get("a"), get("b"), ok("a"), get("c"), get("a"), none(),
				ok("c"), ok("b"), get("c"), get("b"),
			},
		},
		{
			name: "rotation with cooldown",
			ips:  []string{"a", "b", "c"},
			cfg:  with(func(c *pool.Config) { c.MinRequestInterval = 3 * time.Second }),
			steps: []step{
				get("a"), ok("a"), advance(time.Second),
				get("b"), ok("b"), advance(time.Second),
				get("c"), ok("c"), none(), advance(time.Second),
				get("a"), ok("a"), none(), advance(time.Second),
				get("b"), none(),
			},
		},
		{
			name: "quarantine at exactly the threshold",
			ips:  []string{"a", "b"},
			cfg:  base,
			steps: []step{
				get("a"), fail("a"), is("a", pool.StateAvailable, 1), get("b"), ok("b"),
				get("a"), fail("a"), is("a", pool.StateAvailable, 2), get("b"), ok("b"),
				events(),
				get("a"), fail("a"), is("a", pool.StateQuarantined, 3),
				events("quarantined a until 1m0s"),
				get("b"), ok("b"), get("b"), none(),
			},
		},
		{
			name: "blame after a neutral release",
			ips:  []string{"a", "b"},
			cfg:  base,
			steps: []step{
				get("a"), neutral("a"), is("a", pool.StateAvailable, 0),
				blame("a"), is("a", pool.StateAvailable, 1),
				get("b"), ok("b"), get("a"), ok("a"), is("a", pool.StateAvailable, 0), // a success resets it
				blame("a"), blame("a"), is("a", pool.StateAvailable, 2), events(),
				get("b"), blame("b"), blame("b"), blame("b"), is("b", pool.StateInUse, 3),
				events("quarantined b until 1m0s"), neutral("b"), is("b", pool.StateQuarantined, 3),
				blame("a"), is("a", pool.StateQuarantined, 3), events("quarantined a until 1m0s"),
				none(), advance(time.Minute), is("a", pool.StateAvailable, 0), is("b", pool.StateAvailable, 0),
			},
		},
		{
			name: "threshold of one",
			ips:  []string{"a", "b"},
			cfg:  with(func(c *pool.Config) { c.FailuresUntilQuarantine = 1 }),
			steps: []step{
				get("a"), fail("a"), is("a", pool.StateQuarantined, 1),
				events("quarantined a until 1m0s"), get("b"), none(),
			},
		},
		{
			name: "success resets the count",
			ips:  []string{"a"},
			cfg:  base,
			steps: []step{
				get("a"), fail("a"), get("a"), fail("a"), get("a"), ok("a"), is("a", pool.StateAvailable, 0),
				get("a"), fail("a"), get("a"), fail("a"), is("a", pool.StateAvailable, 2), events(),
				get("a"), fail("a"), is("a", pool.StateQuarantined, 3), events("quarantined a until 1m0s"),
			},
		},
		{
			name: "quarantine release to the nanosecond, count reset",
			ips:  []string{"a", "b"},
			cfg:  with(func(c *pool.Config) { c.FailuresUntilQuarantine = 2; c.QuarantineTime = 10 * time.Second }),
			steps: []step{
				get("a"), fail("a"), get("b"), ok("b"), get("a"), fail("a"),
				events("quarantined a until 10s"),
				advance(10*time.Second - time.Nanosecond),
				is("a", pool.StateQuarantined, 2), events(),
				get("b"), none(), ok("b"),
				advance(time.Nanosecond),
				events("released a at 10s"), is("a", pool.StateAvailable, 0),
				// b has been free since before a came back.
				get("b"), get("a"),
				// A clean count: one failure is not two.
				fail("a"), is("a", pool.StateAvailable, 1), events(),
			},
		},
		{
			name: "released IP skips the cooldown",
			ips:  []string{"a"},
			cfg: with(func(c *pool.Config) {
				c.MinRequestInterval = time.Hour
				c.FailuresUntilQuarantine = 1
				c.QuarantineTime = 10 * time.Second
			}),
			steps: []step{
				get("a"), fail("a"), advance(10 * time.Second),
				events("quarantined a until 10s", "released a at 10s"), get("a"),
			},
		},
		{
			name: "each quarantine released at its own time",
			ips:  []string{"a", "b", "c"},
			cfg:  with(func(c *pool.Config) { c.FailuresUntilQuarantine = 1; c.QuarantineTime = 10 * time.Second }),
			steps: []step{
				get("a"), fail("a"), advance(3 * time.Second),
				get("b"), fail("b"), advance(time.Second),
				get("c"), fail("c"), none(),
				events("quarantined a until 10s", "quarantined b until 13s", "quarantined c until 14s"),
				advance(6*time.Second - time.Nanosecond), events(), none(),
				advance(time.Nanosecond), events("released a at 10s"), get("a"), none(),
				advance(3*time.Second - time.Nanosecond), events(),
				advance(time.Nanosecond), events("released b at 13s"),
				advance(time.Second), events("released c at 14s"),
				get("b"), get("c"), none(),
			},
		},
		{
			name: "later, shorter quarantine moves the timer earlier",
			ips:  []string{"a", "b"},
			cfg:  with(func(c *pool.Config) { c.FailuresUntilQuarantine = 1; c.QuarantineTime = 10 * time.Second }),
			steps: []step{
				get("a"), fail("a"), events("quarantined a until 10s"),
				// A policy update shortens the quarantine for b.
				step{"update", func(f *fixture) {
					cfg := f.pool.Config()
					cfg.QuarantineTime = 2 * time.Second
					if err := f.pool.Update(f.ctx, []string{"a", "b"}, cfg); err != nil {
						f.t.Fatal(err)
					}
				}},
				advance(time.Second), get("b"), fail("b"), events("quarantined b until 3s"),
				advance(2 * time.Second), events("released b at 3s"),
				advance(7 * time.Second), events("released a at 10s"),
			},
		},
		{
			name: "zero quarantine time",
			ips:  []string{"a"},
			cfg:  with(func(c *pool.Config) { c.FailuresUntilQuarantine = 1; c.QuarantineTime = 0 }),
			steps: []step{
				get("a"), fail("a"), is("a", pool.StateQuarantined, 1),
				advance(0), events("quarantined a until 0s", "released a at 0s"), get("a"),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.ips, tc.cfg)
			for i, s := range tc.steps {
				t.Logf("step %d: %s", i, s.desc)
				s.do(f)
			}
		})
	}
}

func TestReleasedHookBeforeReentry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	clock := pool.NewFakeClock(t0)
	backend := memory.New(clock)
	var seen []pool.State
	p, err := pool.New(ctx, "t", []string{"a"}, backend, pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: time.Second}, pool.Options{
		Clock:  clock,
		Logger: slog.New(slog.DiscardHandler),
		Hooks: pool.Hooks{Released: func(addr string) {
			states, _ := backend.Snapshot(ctx, "t")
			seen = append(seen, states[0].State)
			if got, err := backend.Pop(ctx, "t", 0); err == nil {
				t.Errorf("Pop in Released hook = %q: the IP re-entered before the hook", got)
			}
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr, _ := p.Acquire(ctx)
	if err := p.Release(ctx, addr, pool.Failure); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if !slices.Equal(seen, []pool.State{pool.StateInUse}) {
		t.Fatalf("Released hook saw states %v, want one call while the IP is out of the pool", seen)
	}
	if got, err := p.Acquire(ctx); err != nil || got != "a" {
		t.Fatalf("Acquire after release = %q, %v; want a", got, err)
	}
}

func TestWaiterServedByQuarantineRelease(t *testing.T) {
	f := newFixture(t, []string{"a"}, pool.Config{
		MaxQueueWait:            time.Minute,
		FailuresUntilQuarantine: 1,
		QuarantineTime:          10 * time.Second,
	})
	get("a").do(f)
	fail("a").do(f)
	ch := f.goAcquire()
	f.clock.Advance(10*time.Second - time.Nanosecond)
	f.waiting(1)
	f.notReturned(ch)
	f.clock.Advance(time.Nanosecond)
	if r := f.await(ch); r.err != nil || r.addr != "a" {
		t.Fatalf("waiter got %q, %v; want a, released from quarantine", r.addr, r.err)
	}
	events("quarantined a until 10s", "released a at 10s").do(f)
}

func TestAcquireTimeout(t *testing.T) {
	f := newFixture(t, []string{"a"}, pool.Config{MaxQueueWait: 5 * time.Second, FailuresUntilQuarantine: 1})
	get("a").do(f)
	ch := f.goAcquire()
	f.clock.Advance(5*time.Second - time.Nanosecond)
	f.waiting(1)
	f.notReturned(ch)
	f.clock.Advance(time.Nanosecond)
	if r := f.await(ch); !errors.Is(r.err, pool.ErrNoIP) {
		t.Fatalf("Acquire after maxQueueWait = %q, %v; want %v", r.addr, r.err, pool.ErrNoIP)
	}
	f.waiting(0)
	// The IP that comes back later goes to the next caller, not the one that gave up.
	ok("a").do(f)
	get("a").do(f)
}

// TestAcquireQueueCap: with MaxQueueLength callers waiting, one more is
// refused at once with ErrQueueFull; once a waiter is served there is room
// again.
func TestAcquireQueueCap(t *testing.T) {
	f := newFixture(t, []string{"a"}, pool.Config{MaxQueueWait: time.Minute, FailuresUntilQuarantine: 1, MaxQueueLength: 2})
	get("a").do(f)
	ch1 := f.goAcquire()
	ch2 := f.goAcquire()
	if got, err := f.acquire0(); !errors.Is(err, pool.ErrQueueFull) {
		t.Fatalf("third waiter: Acquire = %q, %v; want %v at once", got, err, pool.ErrQueueFull)
	}
	f.waiting(2)
	if n := f.pool.Waiting(); n != 2 {
		t.Fatalf("Waiting = %d, want 2", n)
	}
	ok("a").do(f)
	if r := f.await(ch1); r.err != nil || r.addr != "a" {
		t.Fatalf("first waiter got %q, %v; want a", r.addr, r.err)
	}
	ch3 := f.goAcquire() // room for one again
	f.notReturned(ch2)
	f.notReturned(ch3)
	f.clock.Advance(time.Minute)
	for _, ch := range []<-chan acquireResult{ch2, ch3} {
		if r := f.await(ch); !errors.Is(r.err, pool.ErrNoIP) {
			t.Fatalf("waiter got %q, %v; want %v after maxQueueWait", r.addr, r.err, pool.ErrNoIP)
		}
	}
	f.waiting(0)
	if n := f.pool.Waiting(); n != 0 {
		t.Fatalf("Waiting = %d after every caller returned, want 0", n)
	}
}

func TestAcquireFIFO(t *testing.T) {
	f := newFixture(t, []string{"a", "b"}, pool.Config{
		MinRequestInterval:      2 * time.Second,
		MaxQueueWait:            time.Minute,
		FailuresUntilQuarantine: 1,
	})
	get("a").do(f)
	get("b").do(f)
	var chs []<-chan acquireResult
	for range 3 {
		chs = append(chs, f.goAcquire())
	}
	ok("a").do(f) // ready at 2s
	f.clock.Advance(time.Second)
	ok("b").do(f) // ready at 3s
	f.clock.Advance(time.Second - time.Nanosecond)
	f.waiting(3)
	f.clock.Advance(time.Nanosecond)
	if r := f.await(chs[0]); r.err != nil || r.addr != "a" {
		t.Fatalf("first waiter got %q, %v; want a at 2s", r.addr, r.err)
	}
	f.waiting(2)
	f.notReturned(chs[1])
	f.notReturned(chs[2])
	f.clock.Advance(time.Second)
	if r := f.await(chs[1]); r.err != nil || r.addr != "b" {
		t.Fatalf("second waiter got %q, %v; want b at 3s", r.addr, r.err)
	}
	f.waiting(1)
	ok("a").do(f) // the first waiter is done with a; ready at 5s
	f.clock.Advance(2 * time.Second)
	if r := f.await(chs[2]); r.err != nil || r.addr != "a" {
		t.Fatalf("third waiter got %q, %v; want a at 5s", r.addr, r.err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     pool.Config
		wantErr string // a field name, or "" for valid
	}{
		{"minimal", pool.Config{FailuresUntilQuarantine: 1}, ""},
		{"typical", pool.Config{MinRequestInterval: 5 * time.Second, MaxQueueWait: 30 * time.Second, FailuresUntilQuarantine: 3, QuarantineTime: 10 * time.Minute}, ""},
		{"negative interval", pool.Config{MinRequestInterval: -1, FailuresUntilQuarantine: 1}, "minRequestInterval"},
		{"negative queue wait", pool.Config{MaxQueueWait: -time.Second, FailuresUntilQuarantine: 1}, "maxQueueWait"},
		{"zero failures", pool.Config{}, "ipFailuresUntilQuarantine"},
		{"negative failures", pool.Config{FailuresUntilQuarantine: -2}, "ipFailuresUntilQuarantine"},
		{"negative quarantine", pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: -time.Minute}, "quarantineTime"},
		{"negative queue length", pool.Config{FailuresUntilQuarantine: 1, MaxQueueLength: -1}, "maxQueueLength"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate() = %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name    string
		addrs   []string
		cfg     pool.Config
		wantErr []string
	}{
		{"invalid config", []string{"a"}, pool.Config{FailuresUntilQuarantine: 1, MaxQueueWait: -1}, []string{"target web", "maxQueueWait"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := memory.New(pool.NewFakeClock(t0))
			_, err := pool.New(context.Background(), "web", tc.addrs, b, tc.cfg, pool.Options{})
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("New error %q does not mention %q", err, w)
				}
			}
			// Nothing was seeded.
			if _, err := b.Snapshot(context.Background(), "web"); !errors.Is(err, pool.ErrUnknownTarget) {
				t.Errorf("backend seeded despite the error: %v", err)
			}
		})
	}
}

func TestNewReleasesExistingQuarantine(t *testing.T) {
	// Every Acquire here must return at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	clock := pool.NewFakeClock(t0)
	b := memory.New(clock)
	// An earlier run left a quarantined in a shared backend.
	if err := b.Seed(ctx, "t", []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Quarantine(ctx, "t", "a", t0.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	p, err := pool.New(ctx, "t", []string{"a", "b"}, b, pool.Config{FailuresUntilQuarantine: 1}, pool.Options{Clock: clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	clock.Advance(5*time.Second - time.Nanosecond)
	if got, _ := p.Acquire(ctx); got != "b" {
		t.Fatalf("Acquire = %q, want b", got)
	}
	if got, err := p.Acquire(ctx); !errors.Is(err, pool.ErrNoIP) {
		t.Fatalf("Acquire = %q, %v; want a still quarantined", got, err)
	}
	clock.Advance(time.Nanosecond)
	if got, err := p.Acquire(ctx); err != nil || got != "a" {
		t.Fatalf("Acquire = %q, %v; want a, released by the new pool", got, err)
	}
}

func TestUpdate(t *testing.T) {
	f := newFixture(t, []string{"a", "b", "c"}, pool.Config{FailuresUntilQuarantine: 3, QuarantineTime: time.Minute})
	get("a").do(f)
	next := pool.Config{
		MinRequestInterval:      5 * time.Second,
		MaxQueueWait:            2 * time.Second,
		FailuresUntilQuarantine: 1,
		QuarantineTime:          10 * time.Second,
	}
	if err := f.pool.Update(f.ctx, []string{"b", "c", "d"}, next); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if got := f.pool.Config(); got != next {
		t.Fatalf("Config() = %+v, want %+v", got, next)
	}
	// a leaves when it comes back; d has joined.
	ok("a").do(f)
	for _, s := range []step{get("b"), get("c"), get("d")} {
		s.do(f)
	}
	// The new threshold: one failure quarantines.
	fail("d").do(f)
	is("d", pool.StateQuarantined, 1).do(f)
	events("quarantined d until 10s").do(f)
	// The new interval.
	ok("b").do(f)
	is("b", pool.StateCooling, 0).do(f)
	// The new queue wait: Acquire now waits, and gives up after 2s.
	ch := f.goAcquire()
	f.clock.Advance(2 * time.Second)
	if r := f.await(ch); !errors.Is(r.err, pool.ErrNoIP) {
		t.Fatalf("Acquire = %q, %v; want %v after the new maxQueueWait", r.addr, r.err, pool.ErrNoIP)
	}
	f.clock.Advance(3 * time.Second)
	get("b").do(f)
	states, _ := f.pool.Snapshot(f.ctx)
	var addrs []string
	for _, s := range states {
		addrs = append(addrs, s.Addr)
	}
	if want := []string{"b", "c", "d"}; !slices.Equal(addrs, want) {
		t.Fatalf("pool lists %v after Update, want %v", addrs, want)
	}

	// Rejected updates change nothing.
	for _, bad := range []struct {
		name  string
		addrs []string
		cfg   pool.Config
	}{
		{"invalid config", []string{"x"}, pool.Config{}},
	} {
		err := f.pool.Update(f.ctx, bad.addrs, bad.cfg)
		if err == nil || !strings.Contains(err.Error(), "target t") {
			t.Errorf("Update with %s = %v, want an error naming the target", bad.name, err)
		}
		if got := f.pool.Config(); got != next {
			t.Errorf("after Update with %s Config() = %+v, want %+v", bad.name, got, next)
		}
		if n := len(must(f.pool.Snapshot(f.ctx))); n != 3 {
			t.Errorf("after Update with %s the pool has %d IPs, want 3", bad.name, n)
		}
	}
}

// TestUpdateNoIPs: an Update with no IP removes them all (the one in use
// drains), requests wait up to MaxQueueWait and then get ErrNoIP, and an
// Update that restores IPs serves the waiting requests at once.
func TestUpdateNoIPs(t *testing.T) {
	cfg := pool.Config{MaxQueueWait: 10 * time.Second, FailuresUntilQuarantine: 1}
	f := newFixture(t, []string{"a", "b"}, cfg)
	get("a").do(f)
	if err := f.pool.Update(f.ctx, nil, cfg); err != nil {
		t.Fatalf("Update with no IPs: %v", err)
	}
	waiter := f.goAcquire()
	ok("a").do(f) // drains: a is gone, and the waiter does not get it
	f.notReturned(waiter)
	if n := len(must(f.pool.Snapshot(f.ctx))); n != 0 {
		t.Fatalf("pool with no IPs lists %d after the drain", n)
	}
	f.clock.Advance(5 * time.Second)
	late := f.goAcquire()
	f.clock.Advance(5 * time.Second)
	if r := f.await(waiter); !errors.Is(r.err, pool.ErrNoIP) {
		t.Fatalf("Acquire on an empty pool = %q, %v; want %v after maxQueueWait", r.addr, r.err, pool.ErrNoIP)
	}
	f.clock.Advance(time.Second)
	f.notReturned(late)
	if err := f.pool.Update(f.ctx, []string{"c"}, cfg); err != nil {
		t.Fatalf("Update restoring IPs: %v", err)
	}
	if r := f.await(late); r.err != nil || r.addr != "c" {
		t.Fatalf("waiting Acquire after restore = %q, %v; want c", r.addr, r.err)
	}
}

// TestNewNoIPs: a pool may start with no IP and get them by Update.
func TestNewNoIPs(t *testing.T) {
	f := newFixture(t, nil, pool.Config{FailuresUntilQuarantine: 1})
	if _, err := f.acquire0(); !errors.Is(err, pool.ErrNoIP) {
		t.Fatalf("Acquire on a pool with no IPs = %v, want %v", err, pool.ErrNoIP)
	}
	if err := f.pool.Update(f.ctx, []string{"a"}, pool.Config{FailuresUntilQuarantine: 1}); err != nil {
		t.Fatal(err)
	}
	get("a").do(f)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestCloseStopsReleases(t *testing.T) {
	f := newFixture(t, []string{"a"}, pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: time.Second})
	get("a").do(f)
	fail("a").do(f)
	events("quarantined a until 1s").do(f)
	if n := f.clock.Pending(); n != 1 {
		t.Fatalf("%d timers pending, want the release timer", n)
	}
	f.pool.Close()
	if n := f.clock.Pending(); n != 0 {
		t.Fatalf("%d timers pending after Close, want 0", n)
	}
	f.clock.Advance(time.Hour)
	events().do(f)
	is("a", pool.StateQuarantined, 1).do(f)
}

// flaky is a backend whose chosen methods fail a given number of times.
type flaky struct {
	pool.Backend
	mu   sync.Mutex
	left map[string]int
}

func (b *flaky) failNext(method string, times int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.left[method] = times
}

func (b *flaky) err(method string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left[method] == 0 {
		return nil
	}
	b.left[method]--
	return fmt.Errorf("%s: %w", method, pool.ErrBackendUnavailable)
}

func (b *flaky) IncrFailures(ctx context.Context, target, addr string) (int, error) {
	if err := b.err("IncrFailures"); err != nil {
		return 0, err
	}
	return b.Backend.IncrFailures(ctx, target, addr)
}

func (b *flaky) ResetFailures(ctx context.Context, target, addr string) error {
	if err := b.err("ResetFailures"); err != nil {
		return err
	}
	return b.Backend.ResetFailures(ctx, target, addr)
}

func (b *flaky) Quarantine(ctx context.Context, target, addr string, until time.Time) error {
	if err := b.err("Quarantine"); err != nil {
		return err
	}
	return b.Backend.Quarantine(ctx, target, addr, until)
}

func (b *flaky) NextExpiry(ctx context.Context, target string) (time.Time, bool, error) {
	if err := b.err("NextExpiry"); err != nil {
		return time.Time{}, false, err
	}
	return b.Backend.NextExpiry(ctx, target)
}

func newFlakyFixture(t *testing.T, addrs []string, cfg pool.Config) (*fixture, *flaky) {
	f := &fixture{t: t, clock: pool.NewFakeClock(t0)}
	f.backend = memory.New(f.clock)
	fb := &flaky{Backend: f.backend, left: map[string]int{}}
	f.pool = f.newPool(fb, addrs, cfg)
	return f, fb
}

// A backend error while counting must not lose the IP.
func TestReleaseBackendErrorKeepsIP(t *testing.T) {
	tests := []struct {
		method   string
		outcome  pool.Outcome
		failures int // counted before the error
	}{
		{"ResetFailures", pool.Success, 0},
		{"IncrFailures", pool.Failure, 0},
		{"Quarantine", pool.Failure, 1},
	}
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			f, fb := newFlakyFixture(t, []string{"a"}, pool.Config{MinRequestInterval: time.Second, FailuresUntilQuarantine: 1})
			get("a").do(f)
			fb.failNext(tc.method, 1)
			if err := f.pool.Release(f.ctx, "a", tc.outcome); !errors.Is(err, pool.ErrBackendUnavailable) {
				t.Fatalf("Release = %v, want %v", err, pool.ErrBackendUnavailable)
			}
			is("a", pool.StateCooling, tc.failures).do(f)
			f.clock.Advance(time.Second)
			get("a").do(f)
		})
	}
}

// A backend error while looking for the next quarantine end must not leave
// quarantined IPs out for good.
func TestReleaseTimerSurvivesBackendError(t *testing.T) {
	f, fb := newFlakyFixture(t, []string{"a", "b", "c"}, pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: 10 * time.Second})
	get("a").do(f)
	fail("a").do(f) // until 10s
	f.clock.Advance(5 * time.Second)
	get("b").do(f)
	fail("b").do(f) // until 15s
	fb.failNext("NextExpiry", 1)
	f.clock.Advance(5 * time.Second) // a released; finding b's time fails
	events("quarantined a until 10s", "quarantined b until 15s", "released a at 10s").do(f)
	is("b", pool.StateQuarantined, 1).do(f)
	f.clock.Advance(5 * time.Second) // a retry at 11s finds 15s
	events("released b at 15s").do(f)
	is("b", pool.StateAvailable, 0).do(f)
}

func benchPool(b *testing.B) *pool.Pool {
	b.Helper()
	addrs := make([]string, 1000)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.%d.%d.1:3128", i/256, i%256)
	}
	backend := memory.New(nil)
	p, err := pool.New(context.Background(), "bench", addrs, backend,
		pool.Config{MaxQueueWait: time.Second, FailuresUntilQuarantine: 3, QuarantineTime: time.Minute},
		pool.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close(); backend.Close() })
	return p
}

// reportRates adds throughput, and the CPU time per op that stays
// meaningful when other processes load the machine.
func reportRates(b *testing.B, cpuStart time.Duration, ok bool) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	if end, ok2 := cputime.Self(); ok && ok2 {
		b.ReportMetric(float64(end-cpuStart)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkAcquireRelease is one acquire and one successful release on a
// target of 1000 IPs with no cooldown, on the wall clock.
func BenchmarkAcquireRelease(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	b.ReportAllocs()
	cpu, ok := cputime.Self()
	for b.Loop() {
		addr, err := p.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Release(ctx, addr, pool.Success); err != nil {
			b.Fatal(err)
		}
	}
	reportRates(b, cpu, ok)
}

// BenchmarkAcquireReleaseParallel is the same from GOMAXPROCS goroutines;
// its cpu-ns/op is summed over them.
func BenchmarkAcquireReleaseParallel(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	b.ReportAllocs()
	cpu, ok := cputime.Self()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			addr, err := p.Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			if err := p.Release(ctx, addr, pool.Success); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRates(b, cpu, ok)
}
