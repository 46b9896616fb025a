package pool_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
)

// TestQuarantineCause: the cause in the context of the Release, Blame or
// Quarantine that quarantines an IP reaches QuarantinedWhy (with
// Quarantined still called), chained hooks both get it, and a cause is
// cut and cleaned.
func TestQuarantineCause(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	clock := pool.NewFakeClock(t0)
	backend := memory.New(clock)
	defer backend.Close()
	var got, plain, second []string
	h := pool.Hooks{
		Quarantined:    func(addr string, until time.Time) { plain = append(plain, addr) },
		QuarantinedWhy: func(addr string, until time.Time, cause string) { got = append(got, addr+" "+cause) },
	}.Then(pool.Hooks{QuarantinedWhy: func(addr string, until time.Time, cause string) { second = append(second, cause) }})
	p, err := pool.New(ctx, "t", []string{"a", "b", "c", "d"}, backend,
		pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: time.Minute},
		pool.Options{Clock: clock, Logger: slog.New(slog.DiscardHandler), Hooks: h})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	take := func(addr string) {
		t.Helper()
		if ok, err := p.TryTake(ctx, addr); !ok || err != nil {
			t.Fatalf("take %s: %v %v", addr, ok, err)
		}
	}
	take("a")
	if err := p.Release(pool.WithCause(ctx, "status_429"), "a", pool.Failure); err != nil {
		t.Fatal(err)
	}
	if err := p.Blame(pool.WithCause(ctx, "connect_status_502"), "b"); err != nil {
		t.Fatal(err)
	}
	if err := p.Quarantine(pool.WithCause(ctx, "admin"), "c", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	take("d")
	if err := p.Release(ctx, "d", pool.Failure); err != nil { // no cause
		t.Fatal(err)
	}
	want := []string{"a status_429", "b connect_status_502", "c admin", "d "}
	if !slices.Equal(got, want) || !slices.Equal(plain, []string{"a", "b", "c", "d"}) ||
		!slices.Equal(second, []string{"status_429", "connect_status_502", "admin", ""}) {
		t.Fatalf("hooks: why %q, plain %q, chained %q; want %q", got, plain, second, want)
	}
	if c := pool.CauseOf(pool.WithCause(ctx, strings.Repeat("x", 200))); len(c) != pool.MaxCauseLen {
		t.Errorf("a long cause is %d bytes, want %d", len(c), pool.MaxCauseLen)
	}
	if c := pool.CleanCause("st\x00tus\n\u00e9<b>"); c != "st?tus??<b>" {
		t.Errorf("CleanCause = %q", c)
	}
}
