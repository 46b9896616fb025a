package pool_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// acquireExcept is AcquireExcept that must return at once.
func (f *fixture) acquireExcept0(tried ...string) (string, error) {
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	return f.pool.AcquireExcept(ctx, tried)
}

// goAcquireExcept is goAcquire for AcquireExcept.
func (f *fixture) goAcquireExcept(tried ...string) <-chan acquireResult {
	f.t.Helper()
	n := f.backend.Waiting("t")
	ch := make(chan acquireResult, 1)
	ctx, cancel := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	f.t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		addr, err := f.pool.AcquireExcept(ctx, tried)
		ch <- acquireResult{addr, err}
	})
	f.waiting(n + 1)
	return ch
}

// A request's retries, as the proxy makes them: each one passes the IPs
// tried so far. A failed IP back in the pool at once (no cooldown) is not
// handed to the same request again while another IP may come free; it
// serves other requests meanwhile.
func TestAcquireExceptRetry(t *testing.T) {
	f := newFixture(t, []string{"a", "b", "c"}, pool.Config{MaxQueueWait: time.Minute, FailuresUntilQuarantine: 3})
	get("a").do(f) // the request's first attempt
	get("b").do(f) // other requests
	get("c").do(f)
	fail("a").do(f)
	retry := f.goAcquireExcept("a")
	f.notReturned(retry)
	if got, err := f.acquire0(); err != nil || got != "a" {
		t.Fatalf("another request's Acquire = %q, %v; want a (the retry skips it)", got, err)
	}
	ok("a").do(f)
	f.notReturned(retry)
	fail("c").do(f)
	if r := f.await(retry); r.err != nil || r.addr != "c" {
		t.Fatalf("retry got %q, %v; want c", r.addr, r.err)
	}
	fail("c").do(f)
	// Second retry: a and c tried, b in use.
	retry = f.goAcquireExcept("a", "c")
	ok("b").do(f)
	if r := f.await(retry); r.err != nil || r.addr != "b" {
		t.Fatalf("second retry got %q, %v; want b", r.addr, r.err)
	}
	fail("b").do(f)
	// Every IP tried: as Acquire, the one free longest.
	if got, err := f.acquireExcept0("a", "c", "b"); err != nil || got != "a" {
		t.Fatalf("third retry = %q, %v; want a", got, err)
	}
}

// A retry that would have to wait when MaxQueueLength callers wait already
// gets ErrQueueFull, as Acquire does; one with an untried IP free gets it.
func TestAcquireExceptQueueCap(t *testing.T) {
	f := newFixture(t, []string{"a", "b"}, pool.Config{MaxQueueWait: time.Minute, FailuresUntilQuarantine: 3, MaxQueueLength: 1})
	get("a").do(f)
	get("b").do(f)
	waiter := f.goAcquire()
	ok("a").do(f)
	if r := f.await(waiter); r.err != nil || r.addr != "a" {
		t.Fatalf("waiter got %q, %v; want a", r.addr, r.err)
	}
	ok("a").do(f) // a free, b in use
	waiter = f.goAcquireExcept("a")
	if got, err := f.acquireExcept0("a"); !errors.Is(err, pool.ErrQueueFull) {
		t.Fatalf("AcquireExcept(a) with the queue full = %q, %v; want %v", got, err, pool.ErrQueueFull)
	}
	if got, err := f.acquireExcept0("b"); err != nil || got != "a" {
		t.Fatalf("AcquireExcept(b) with the queue full = %q, %v; want a", got, err)
	}
	f.notReturned(waiter)
}

func TestExceptSet(t *testing.T) {
	long := make([]string, pool.MaxExcept+5)
	for i := range long {
		long[i] = fmt.Sprint(i)
	}
	for _, tc := range []struct {
		in, want []string
	}{
		{nil, nil},
		{[]string{""}, nil},
		{[]string{"a", "b", "a", "", "c", "b"}, []string{"a", "c", "b"}},
		{long, long[5:]},
	} {
		if got := pool.ExceptSet(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("ExceptSet(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// BenchmarkAcquireExcept compares Acquire with AcquireExcept on the memory
// backend (benchPool: 1000 IPs, no cooldown, wall clock): one acquire and
// one successful release per op. tried=1 skips the IP of the previous op,
// which has just gone to the back of the queue (a typical retry); at
// the head=k, the k IPs at the head of the queue are tried, so every
// call skips k IPs and checks k entries of its set (the worst case).
//
//	go test -run '^$' -bench AcquireExcept ./pool/
func BenchmarkAcquireExcept(b *testing.B) {
	for _, bc := range []struct {
		name string
		k    int  // IPs tried
		head bool // the tried IPs are at the head of the queue
	}{
		{"acquire", 0, false},
		{"tried=1", 1, false},
		{"head=1", 1, true},
		{fmt.Sprintf("head=%d", pool.MaxExcept), pool.MaxExcept, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := benchPool(b)
			ctx := context.Background()
			var tried []string
			if bc.head {
				// The first IPs seeded: never taken, they stay at the head
				// while the others go round behind them.
				for i := range bc.k {
					tried = append(tried, fmt.Sprintf("10.%d.%d.1:3128", i/256, i%256))
				}
			}
			b.ReportAllocs()
			cpu, ok := cputime.Self()
			prev := ""
			for b.Loop() {
				var addr string
				var err error
				switch {
				case bc.k == 0:
					addr, err = p.Acquire(ctx)
				case bc.head:
					addr, err = p.AcquireExcept(ctx, tried)
				default:
					addr, err = p.AcquireExcept(ctx, []string{prev})
				}
				if err != nil {
					b.Fatal(err)
				}
				if slices.Contains(tried, addr) {
					b.Fatalf("AcquireExcept(%v) = %s", tried, addr)
				}
				if err := p.Release(ctx, addr, pool.Success); err != nil {
					b.Fatal(err)
				}
				prev = addr
			}
			reportRates(b, cpu, ok)
		})
	}
}
