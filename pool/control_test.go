package pool_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// Steps for the control API: TryTake, Quarantine, ReleaseQuarantine, State.

func take(addr string, want bool) step {
	return step{"take " + addr, func(f *fixture) {
		got, err := f.pool.TryTake(f.ctx, addr)
		if err != nil || got != want {
			f.t.Fatalf("TryTake(%s) = %v, %v; want %v", addr, got, err, want)
		}
	}}
}

func neutral(addr string) step { return release(addr, pool.Neutral) }

// quarantine quarantines addr until t0+at.
func quarantine(addr string, at time.Duration) step {
	return step{"quarantine " + addr, func(f *fixture) {
		if err := f.pool.Quarantine(f.ctx, addr, t0.Add(at)); err != nil {
			f.t.Fatalf("Quarantine(%s): %v", addr, err)
		}
	}}
}

func unquarantine(addr string) step {
	return step{"release quarantine of " + addr, func(f *fixture) {
		if err := f.pool.ReleaseQuarantine(f.ctx, addr); err != nil {
			f.t.Fatalf("ReleaseQuarantine(%s): %v", addr, err)
		}
	}}
}

// until checks addr's state and its time, as t0+at.
func until(addr string, st pool.State, at time.Duration) step {
	return step{"until", func(f *fixture) {
		s, err := f.pool.State(f.ctx, addr)
		if err != nil {
			f.t.Fatalf("State(%s): %v", addr, err)
		}
		if s.State != st || !s.Until.Equal(t0.Add(at)) {
			f.t.Fatalf("%s is %s until %v, want %s until %v", addr, s.State, s.Until.Sub(t0), st, at)
		}
	}}
}

func TestControl(t *testing.T) {
	base := pool.Config{MinRequestInterval: time.Second, FailuresUntilQuarantine: 3, QuarantineTime: time.Minute}
	tests := []struct {
		name  string
		ips   []string
		steps []step
	}{
		{
			name: "TryTake takes an idle IP, and its release cools it down",
			ips:  []string{"a", "b"},
			steps: []step{
				take("b", true), is("b", pool.StateInUse, 0), take("b", false),
				get("a"), none(), neutral("b"), until("b", pool.StateCooling, time.Second),
				take("b", false), advance(time.Second - time.Nanosecond), take("b", false),
				advance(time.Nanosecond), take("b", true), neutral("b"),
				ok("a"), advance(time.Second), get("b"), get("a"),
			},
		},
		{
			name: "TryTake leaves quarantined IPs alone",
			ips:  []string{"a"},
			steps: []step{
				get("a"), fail("a"), advance(time.Second), get("a"), fail("a"), advance(time.Second),
				get("a"), fail("a"), events("quarantined a until 1m2s"), take("a", false),
				advance(time.Minute), events("released a at 1m2s"), take("a", true),
			},
		},
		{
			name: "Quarantine of an available IP, released by the timer",
			ips:  []string{"b", "a"},
			steps: []step{
				get("b"), fail("b"), quarantine("a", 10*time.Second),
				events("quarantined a until 10s"), until("a", pool.StateQuarantined, 10*time.Second), none(),
				advance(10*time.Second - time.Nanosecond), events(),
				advance(time.Nanosecond), events("released a at 10s"), is("a", pool.StateAvailable, 0),
				get("b"), get("a"),
			},
		},
		{
			name: "Quarantine of a cooling IP; a second Quarantine moves it",
			ips:  []string{"a"},
			steps: []step{
				get("a"), ok("a"), quarantine("a", 30*time.Second), advance(time.Second), none(),
				quarantine("a", 5*time.Second),
				events("quarantined a until 30s", "quarantined a until 5s"),
				advance(4 * time.Second), events("released a at 5s"), get("a"),
			},
		},
		{
			name: "Quarantine of an IP in use takes effect on its release",
			ips:  []string{"a", "b"},
			steps: []step{
				get("a"), quarantine("a", 10*time.Second), events("quarantined a until 10s"),
				is("a", pool.StateInUse, 0),
				// Any outcome: the IP does not go back to the queue.
				advance(time.Second), ok("a"), until("a", pool.StateQuarantined, 10*time.Second),
				get("b"), none(), ok("b"),
				advance(9 * time.Second), events("released a at 10s"), get("b"), get("a"),
			},
		},
		{
			name: "IP in use quarantined: its release arms the timer even when an earlier quarantine ran meanwhile",
			ips:  []string{"a", "b", "c"},
			steps: []step{
				get("a"), quarantine("a", 20*time.Second), quarantine("b", 5*time.Second),
				advance(5 * time.Second), events("quarantined a until 20s", "quarantined b until 5s", "released b at 5s"),
				advance(5 * time.Second), fail("a"), is("a", pool.StateQuarantined, 1),
				advance(10*time.Second - time.Nanosecond), events(),
				advance(time.Nanosecond), events("released a at 20s"), is("a", pool.StateAvailable, 0),
			},
		},
		{
			name: "IP in use released after its quarantine time comes back as usual",
			ips:  []string{"a"},
			steps: []step{
				get("a"), quarantine("a", 10*time.Second), advance(20 * time.Second),
				ok("a"), until("a", pool.StateCooling, 21*time.Second),
				advance(time.Second), get("a"),
			},
		},
		{
			name: "ReleaseQuarantine puts the IP back at once, count reset, hook first",
			ips:  []string{"a"},
			steps: []step{
				get("a"), fail("a"), advance(time.Second), get("a"), fail("a"), advance(time.Second),
				get("a"), fail("a"), is("a", pool.StateQuarantined, 3), events("quarantined a until 1m2s"),
				advance(time.Second), unquarantine("a"), events("released a at 3s"),
				is("a", pool.StateAvailable, 0), get("a"), ok("a"),
				// The timer at the old release time finds nothing to do.
				advance(time.Minute), events(), is("a", pool.StateAvailable, 0),
			},
		},
		{
			name: "ReleaseQuarantine cancels a pending quarantine",
			ips:  []string{"a"},
			steps: []step{
				get("a"), quarantine("a", 10*time.Second), unquarantine("a"),
				events("quarantined a until 10s", "released a at 0s"),
				is("a", pool.StateInUse, 0), ok("a"), until("a", pool.StateCooling, time.Second),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.ips, base)
			for i, s := range tc.steps {
				t.Logf("step %d: %s", i, s.desc)
				s.do(f)
			}
		})
	}
}

func TestControlErrors(t *testing.T) {
	f := newFixture(t, []string{"b", "a"}, pool.Config{FailuresUntilQuarantine: 1})
	get("b").do(f)
	if _, err := f.pool.TryTake(f.ctx, "x"); !errors.Is(err, pool.ErrUnknownIP) {
		t.Errorf("TryTake(x): %v, want %v", err, pool.ErrUnknownIP)
	}
	if err := f.pool.Quarantine(f.ctx, "x", t0.Add(time.Hour)); !errors.Is(err, pool.ErrUnknownIP) {
		t.Errorf("Quarantine(x): %v, want %v", err, pool.ErrUnknownIP)
	}
	if err := f.pool.ReleaseQuarantine(f.ctx, "x"); !errors.Is(err, pool.ErrUnknownIP) {
		t.Errorf("ReleaseQuarantine(x): %v, want %v", err, pool.ErrUnknownIP)
	}
	if _, err := f.pool.State(f.ctx, "x"); !errors.Is(err, pool.ErrUnknownIP) {
		t.Errorf("State(x): %v, want %v", err, pool.ErrUnknownIP)
	}
	for _, addr := range []string{"a", "b"} { // available, in use
		if err := f.pool.ReleaseQuarantine(f.ctx, addr); !errors.Is(err, pool.ErrNotQuarantined) {
			t.Errorf("ReleaseQuarantine(%s): %v, want %v", addr, err, pool.ErrNotQuarantined)
		}
	}
	events().do(f)
}

// Hooks.Then calls both hooks in order and keeps a lone one as it is.
func TestHooksThen(t *testing.T) {
	var got []string
	a := pool.Hooks{Quarantined: func(addr string, _ time.Time) { got = append(got, "a q "+addr) }}
	b := pool.Hooks{
		Quarantined: func(addr string, _ time.Time) { got = append(got, "b q "+addr) },
		Released:    func(addr string) { got = append(got, "b r "+addr) },
	}
	h := a.Then(b)
	h.Quarantined("x", time.Time{})
	h.Released("y")
	if want := []string{"a q x", "b q x", "b r y"}; !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if h := (pool.Hooks{}).Then(pool.Hooks{}); h.Quarantined != nil || h.Released != nil {
		t.Error("Then of empty hooks is not empty")
	}
}
