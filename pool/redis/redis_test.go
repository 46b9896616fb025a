package redis_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/pooltest"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
)

var _ pooltest.WaitCounter = (*redis.Backend)(nil)

// prefixes keeps every backend of a test run in its own key space, so
// tests share one redis-server without flushing it.
var prefixes atomic.Int64

func newPrefix() string { return fmt.Sprintf("test%d:", prefixes.Add(1)) }

func newBackend(t testing.TB, url string, o redis.Options) *redis.Backend {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = newPrefix()
	}
	b, err := redis.New(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Crash)
	return b
}

func TestContract(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		return newBackend(t, srv.URL(0), redis.Options{Clock: clock})
	})
}

// The contract again, one round trip per call.
func TestContractNoAutoPipeline(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		return newBackend(t, srv.URL(0), redis.Options{Clock: clock, NoAutoPipeline: true})
	})
}

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// pair is two agents' backends sharing one pool.
func pair(t *testing.T, url string, o redis.Options) (a, b *redis.Backend) {
	t.Helper()
	o.Prefix = newPrefix()
	a, b = newBackend(t, url, o), newBackend(t, url, o)
	for _, be := range []*redis.Backend{a, b} {
		if err := be.Seed(context.Background(), "t", []string{"x", "y"}[:1]); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

func mustPop(t *testing.T, b *redis.Backend, timeout time.Duration) string {
	t.Helper()
	addr, err := b.Pop(context.Background(), "t", timeout)
	if err != nil {
		t.Fatalf("Pop: %v", err)
	}
	return addr
}

func mustEmpty(t *testing.T, b *redis.Backend) {
	t.Helper()
	if addr, err := b.Pop(context.Background(), "t", 0); !errors.Is(err, pool.ErrNoIP) {
		t.Fatalf("Pop = %q, %v; want %v", addr, err, pool.ErrNoIP)
	}
}

// An IP held by an agent that died comes back when its lease runs out, and
// not before.
func TestLeaseOfDeadHolderRunsOut(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	clock := pool.NewFakeClock(t0)
	a, b := pair(t, srv.URL(0), redis.Options{Clock: clock, LeaseTTL: time.Minute})
	if got := mustPop(t, a, 0); got != "x" {
		t.Fatalf("a popped %q", got)
	}
	a.Crash()
	mustEmpty(t, b)
	clock.Advance(time.Minute - time.Millisecond)
	mustEmpty(t, b)
	if s, _ := b.Snapshot(context.Background(), "t"); s[0].State != pool.StateInUse {
		t.Fatalf("before the lease ran out x is %s", s[0].State)
	}
	clock.Advance(time.Millisecond)
	if s, _ := b.Snapshot(context.Background(), "t"); s[0].State != pool.StateAvailable {
		t.Fatalf("once the lease ran out x is %s", s[0].State)
	}
	if got := mustPop(t, b, 0); got != "x" {
		t.Fatalf("b popped %q after the lease ran out, want x", got)
	}
}

// A holder that lost its lease (cut off from Redis past LeaseTTL) cannot
// return the IP the new holder has.
func TestStaleReturnIgnored(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	clock := pool.NewFakeClock(t0)
	a, b := pair(t, srv.URL(0), redis.Options{Clock: clock, LeaseTTL: time.Minute})
	mustPop(t, a, 0)
	clock.Advance(time.Minute)
	mustPop(t, b, 0)
	if err := a.Push(ctx, "t", "x", clock.Now()); err != nil {
		t.Fatal(err)
	}
	mustEmpty(t, a)
	mustEmpty(t, b)
	if err := b.Push(ctx, "t", "x", clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, a, 0); got != "x" {
		t.Fatalf("after the holder returned it a popped %q", got)
	}
}

// A live holder renews its lease: the IP is not reclaimed however long it
// is held.
func TestLeaseRenewed(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	a, b := pair(t, srv.URL(0), redis.Options{LeaseTTL: 150 * time.Millisecond})
	mustPop(t, a, 0)
	time.Sleep(600 * time.Millisecond) // four TTLs
	mustEmpty(t, b)
	if err := a.Push(context.Background(), "t", "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	mustPop(t, b, 0)
}

// minRequestInterval is global: an IP returned by one agent with a readyAt
// is not handed out by another before it, and is handed out at it to a
// caller already waiting there.
func TestCooldownAcrossAgents(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	a, b := pair(t, srv.URL(0), redis.Options{})
	mustPop(t, a, 0)
	readyAt := time.Now().Add(200 * time.Millisecond)
	if err := a.Push(context.Background(), "t", "x", readyAt); err != nil {
		t.Fatal(err)
	}
	mustEmpty(t, b)
	got := mustPop(t, b, 5*time.Second)
	if now := time.Now(); now.Before(readyAt) {
		t.Fatalf("b got %s %v before its readyAt", got, readyAt.Sub(now))
	} else if late := now.Sub(readyAt); late > 100*time.Millisecond {
		t.Errorf("b got the IP %v after its readyAt", late)
	}
}

// A waiter in one agent is served when another agent returns an IP.
func TestRemoteReturnServesWaiter(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	a, b := pair(t, srv.URL(0), redis.Options{})
	mustPop(t, a, 0)
	got := make(chan time.Time, 1)
	go func() { mustPop(t, b, 5*time.Second); got <- time.Now() }()
	testenv.Eventually(t, 5*time.Second, func() error { return wantWaiting(b, 1) })
	time.Sleep(50 * time.Millisecond) // the waiter's poll has backed off
	pushed := time.Now()
	if err := a.Push(context.Background(), "t", "x", pushed); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		if d := at.Sub(pushed); d > redis.DefaultPollInterval+50*time.Millisecond {
			t.Errorf("waiter served %v after the remote return", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not served")
	}
}

// wantWaiting, wantDown and wantMore are conditions for testenv.Eventually.
func wantWaiting(b *redis.Backend, n int) error {
	if got := b.Waiting("t"); got != n {
		return fmt.Errorf("Waiting = %d, want %d", got, n)
	}
	return nil
}

func wantDown(b *redis.Backend, down bool) error {
	if got := b.Down(); got != down {
		return fmt.Errorf("Down = %v, want %v", got, down)
	}
	return nil
}

func wantMore[N int32 | int64](what string, got, than N) error {
	if got <= than {
		return fmt.Errorf("%d %s, want more than %d", got, what, than)
	}
	return nil
}

// A quarantine is released by exactly one agent, also when the agent that
// quarantined the IP died before its release timer fired.
func TestQuarantineReleasedOnce(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	cfg := pool.Config{MaxQueueWait: time.Second, FailuresUntilQuarantine: 1, QuarantineTime: 300 * time.Millisecond}
	for _, die := range []bool{false, true} {
		t.Run(fmt.Sprintf("quarantiner dies=%v", die), func(t *testing.T) {
			ctx := context.Background()
			o := redis.Options{Prefix: newPrefix(), LeaseTTL: 300 * time.Millisecond} // watchers every 100ms
			var released atomic.Int32
			hooks := pool.Hooks{Released: func(string) { released.Add(1) }}
			var pools []*pool.Pool
			var backends []*redis.Backend
			for range 3 {
				be := newBackend(t, srv.URL(0), o)
				p, err := pool.New(ctx, "t", []string{"x", "y"}, be, cfg, pool.Options{Hooks: hooks})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(p.Close)
				pools, backends = append(pools, p), append(backends, be)
			}
			addr, err := pools[0].Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := pools[0].Release(ctx, addr, pool.Failure); err != nil {
				t.Fatal(err)
			}
			if die {
				pools[0].Close()
				backends[0].Crash()
			}
			// The other IP is in use meanwhile: the released one must come.
			other, err := pools[1].Acquire(ctx)
			if err != nil || other == addr {
				t.Fatalf("Acquire = %q, %v", other, err)
			}
			got, err := pools[2].Acquire(ctx)
			if err != nil || got != addr {
				t.Fatalf("Acquire after the quarantine = %q, %v; want %s", got, err, addr)
			}
			time.Sleep(300 * time.Millisecond) // every pool's timer has fired
			if n := released.Load(); n != 1 {
				t.Fatalf("released %d times, want once", n)
			}
			s, err := pools[2].Snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range s {
				if st.Failures != 0 {
					t.Errorf("%s has %d failures after its release", st.Addr, st.Failures)
				}
			}
		})
	}
}

// captureLog is a logger whose records tests can count.
type captureLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *captureLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *captureLog) count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Count(c.buf.String(), "msg=\""+msg)
}

func (c *captureLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(c, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// A Redis restarted without its data: the pool is restored on first use,
// an IP held across the loss is never handed out twice (its holder
// re-asserts it), and the others come free after the grace.
func TestRestoreAfterDataLoss(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	var logs captureLog
	o := redis.Options{Prefix: newPrefix(), Logger: logs.logger(), LeaseTTL: 600 * time.Millisecond}
	a, b := newBackend(t, srv.URL(0), o), newBackend(t, srv.URL(0), o)
	for _, be := range []*redis.Backend{a, b} {
		if err := be.Seed(ctx, "t", []string{"x", "y"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustPop(t, a, 0); got != "x" {
		t.Fatalf("a popped %q", got)
	}
	rc := goredis.NewClient(&goredis.Options{Addr: srv.Addr})
	defer rc.Close()
	if err := rc.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	// b restores the pool; x stays a's, y is free after the grace.
	if got := mustPop(t, b, 2*time.Second); got != "y" {
		t.Fatalf("b popped %q after the loss, want y (a still holds x)", got)
	}
	if d := time.Since(lost); d < 290*time.Millisecond {
		t.Errorf("y handed out %v after the loss, before the grace (LeaseTTL/2)", d)
	}
	time.Sleep(400 * time.Millisecond) // the grace is over: x was re-asserted
	mustEmpty(t, b)
	if err := a.Push(ctx, "t", "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, b, 0); got != "x" {
		t.Fatalf("b popped %q after a returned x", got)
	}
	if n := logs.count("redis had lost the pool"); n != 1 {
		t.Errorf("logged the loss %d times, want once", n)
	}
}

// cutter forwards TCP to addr until cut: a network partition that keeps
// Redis and its data.
type cutter struct {
	t      *testing.T
	addr   string // listen address
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newCutter(t *testing.T, target string) *cutter {
	c := &cutter{t: t, addr: net.JoinHostPort("127.0.0.1", fmt.Sprint(testenv.FreePort(t, "127.0.0.1"))), target: target}
	c.restore()
	t.Cleanup(c.cut)
	return c
}

func (c *cutter) restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.ln = ln
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", c.target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ln != nil {
		c.ln.Close()
		c.ln = nil
	}
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

// Redis unreachable: callers fail fast with ErrBackendUnavailable (waiters
// at once), the change is logged once; returns are kept and replayed, and
// the backend recovers by itself.
func TestOutage(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	net := newCutter(t, srv.Addr)
	var logs captureLog
	b := newBackend(t, "redis://"+net.addr+"/0", redis.Options{Logger: logs.logger(), ProbeInterval: 20 * time.Millisecond})
	if err := b.Seed(ctx, "t", []string{"x", "y"}); err != nil {
		t.Fatal(err)
	}
	x, y := mustPop(t, b, 0), mustPop(t, b, 0)
	waiters := make(chan error, 3)
	for range 3 {
		go func() { _, err := b.Pop(ctx, "t", time.Hour); waiters <- err }()
	}
	testenv.Eventually(t, 5*time.Second, func() error { return wantWaiting(b, 3) })

	net.cut()
	// The waiters' poll finds Redis gone; they must not wait an hour.
	for range 3 {
		select {
		case err := <-waiters:
			if !errors.Is(err, pool.ErrBackendUnavailable) {
				t.Fatalf("waiter got %v, want %v", err, pool.ErrBackendUnavailable)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not released when Redis went away")
		}
	}
	for range 100 {
		start := time.Now()
		_, err := b.Pop(ctx, "t", time.Second)
		if !errors.Is(err, pool.ErrBackendUnavailable) {
			t.Fatalf("Pop while down = %v, want %v", err, pool.ErrBackendUnavailable)
		}
		if d := time.Since(start); d > 10*time.Millisecond {
			t.Fatalf("Pop while down took %v", d)
		}
	}
	// Returns while down are kept: x with a cooldown, y at once.
	readyAt := time.Now().Add(300 * time.Millisecond)
	if err := b.Push(ctx, "t", x, readyAt); err != nil {
		t.Fatalf("Push while down: %v", err)
	}
	if err := b.Push(ctx, "t", y, time.Now()); err != nil {
		t.Fatalf("Push while down: %v", err)
	}
	if n := logs.count("redis unavailable"); n != 1 {
		t.Errorf("logged the outage %d times, want once", n)
	}

	net.restore()
	testenv.Eventually(t, 5*time.Second, func() error { return wantDown(b, false) })
	if got := mustPop(t, b, 0); got != y {
		t.Fatalf("after recovery popped %q, want %s (x still cools)", got, y)
	}
	mustEmpty(t, b)
	if got := mustPop(t, b, 5*time.Second); got != x || time.Now().Before(readyAt) {
		t.Fatalf("popped %q at readyAt%+v, want %s not before its readyAt", got, time.Since(readyAt), x)
	}
	if n := logs.count("redis available again"); n != 1 {
		t.Errorf("logged the recovery %d times, want once", n)
	}
	if n := logs.count("redis unavailable"); n != 1 {
		t.Errorf("logged the outage %d times, want once", n)
	}
}

// Redis killed and started again, empty, with waiters and load: no
// goroutine is left behind and the pool comes back.
func TestRedisRestartedUnderLoad(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := newBackend(t, srv.URL(0), redis.Options{ProbeInterval: 20 * time.Millisecond, LeaseTTL: time.Second})
	if err := b.Seed(ctx, "t", []string{"x", "y", "z"}); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	var ok, unavailable atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				addr, err := b.Pop(ctx, "t", time.Second)
				switch {
				case err == nil:
					ok.Add(1)
					time.Sleep(time.Millisecond)
					if err := b.Push(ctx, "t", addr, time.Now()); err != nil {
						t.Errorf("Push: %v", err)
					}
				case errors.Is(err, pool.ErrBackendUnavailable):
					unavailable.Add(1)
					time.Sleep(time.Millisecond)
				case errors.Is(err, context.Canceled):
				default:
					t.Errorf("Pop: %v", err)
				}
			}
		})
	}
	testenv.Eventually(t, 5*time.Second, func() error { return wantMore("pops served", ok.Load(), 100) })
	srv.Stop()
	testenv.Eventually(t, 5*time.Second, func() error { return wantMore("pops refused unavailable", unavailable.Load(), 1000) })
	if n, limit := runtime.NumGoroutine(), before+16+10; n > limit {
		t.Errorf("%d goroutines while Redis is down, want at most %d", n, limit)
	}
	srv.Start()
	okBefore := ok.Load()
	testenv.Eventually(t, 5*time.Second, func() error { return wantMore("pops served", ok.Load(), okBefore+100) })
	cancel()
	wg.Wait()
	// Every IP is back: nothing was lost in the restart.
	testenv.Eventually(t, 5*time.Second, func() error {
		s, err := b.Snapshot(context.Background(), "t")
		if err != nil || len(s) != 3 {
			return fmt.Errorf("snapshot %+v, %v; want 3 IPs", s, err)
		}
		for _, st := range s {
			if st.State != pool.StateAvailable {
				return fmt.Errorf("snapshot %+v, want every IP available", s)
			}
		}
		return nil
	})
	b.Close()
	<-b.LoopDone()
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, want at most %d", n, before)
		}
		return nil
	})
}

// Close: callers get ErrClosed, but IPs still out can be returned, and the
// connection goes once they are.
func TestCloseDrains(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	a, b := pair(t, srv.URL(0), redis.Options{})
	x := mustPop(t, a, 0)
	a.Close()
	if _, err := a.Pop(ctx, "t", 0); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("Pop after Close = %v", err)
	}
	select {
	case <-a.LoopDone():
		t.Fatal("closed with an IP still out")
	case <-time.After(20 * time.Millisecond):
	}
	if err := a.Push(ctx, "t", x, time.Now()); err != nil {
		t.Fatalf("Push after Close: %v", err)
	}
	select {
	case <-a.LoopDone():
	case <-time.After(5 * time.Second):
		t.Fatal("not finished once every IP was back")
	}
	if got := mustPop(t, b, 0); got != x {
		t.Fatalf("other agent popped %q, want %s", got, x)
	}
}

// The key layout is the documented one.
func TestKeys(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	b := newBackend(t, srv.URL(2), redis.Options{Prefix: "ph:"})
	if err := b.Seed(ctx, "api", []string{"a", "b", "c", "d", "e"}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"a", "b", "c"} {
		if got := mustPopTarget(t, b, "api"); got != a {
			t.Fatalf("popped %s, want %s", got, a)
		}
	}
	_ = b.Push(ctx, "api", "a", time.Now().Add(time.Hour))
	_ = b.Quarantine(ctx, "api", "b", time.Now().Add(time.Hour))
	_, _ = b.IncrFailures(ctx, "api", "d")
	rc := goredis.NewClient(&goredis.Options{Addr: srv.Addr, DB: 2})
	defer rc.Close()
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	want := []string{"ph:{api}:cool", "ph:{api}:fail", "ph:{api}:ip", "ph:{api}:lease", "ph:{api}:meta", "ph:{api}:quar", "ph:{api}:ready"}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	if k := redis.Keys("ph:", "api"); !slices.Contains(k, "ph:{api}:lease") || len(k) != 7 {
		t.Fatalf("Keys = %v", k)
	}
	if ready, _ := rc.LRange(ctx, "ph:{api}:ready", 0, -1).Result(); !slices.Equal(ready, []string{"d", "e"}) {
		t.Errorf("ready = %v", ready)
	}
}

func mustPopTarget(t *testing.T, b *redis.Backend, target string) string {
	t.Helper()
	addr, err := b.Pop(context.Background(), target, 0)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// URLs: password and database number; the password never shows in errors.
func TestURL(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{Password: "s3cret"})
	ctx := context.Background()
	b := newBackend(t, "redis://:s3cret@"+srv.Addr+"/5", redis.Options{Prefix: "ph:"})
	if err := b.Seed(ctx, "t", []string{"a"}); err != nil {
		t.Fatal(err)
	}
	rc := goredis.NewClient(&goredis.Options{Addr: srv.Addr, Password: "s3cret", DB: 5})
	defer rc.Close()
	if n, err := rc.Exists(ctx, "ph:{t}:ip").Result(); err != nil || n != 1 {
		t.Fatalf("pool not in DB 5: %d, %v", n, err)
	}
	wrong := newBackend(t, "redis://:nope@"+srv.Addr+"/5", redis.Options{})
	if err := wrong.Seed(ctx, "t", []string{"a"}); !errors.Is(err, pool.ErrBackendUnavailable) {
		t.Fatalf("wrong password: %v, want %v", err, pool.ErrBackendUnavailable)
	}
	for _, u := range []string{"redis://:s3cret@[bad/0", "http://:s3cret@host/0", "redis://:s3cret@host/x"} {
		_, err := redis.New(u, redis.Options{})
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("New(%q) = %v, want an error without the password", u, err)
		}
	}
	if _, err := redis.New(srv.URL(0), redis.Options{Prefix: "a{b"}); err == nil {
		t.Error("prefix with '{' accepted")
	}
}

// rediss://: TLS, and the certificate is checked unless the URL says not to.
func TestURLTLS(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{TLS: true})
	ctx := context.Background()
	b := newBackend(t, srv.URL(0)+"?skip_verify=true", redis.Options{})
	if err := b.Seed(ctx, "t", []string{"a"}); err != nil {
		t.Fatalf("Seed over TLS: %v", err)
	}
	if got := mustPopTarget(t, b, "t"); got != "a" {
		t.Fatalf("popped %q", got)
	}
	strict := newBackend(t, srv.URL(0), redis.Options{})
	if err := strict.Seed(ctx, "t", []string{"a"}); !errors.Is(err, pool.ErrBackendUnavailable) {
		t.Fatalf("self-signed certificate accepted: %v", err)
	}
}

// Sentinel, from the URL: the contract through a sentinel-discovered master.
func TestContractSentinel(t *testing.T) {
	master := testenv.StartRedis(t, testenv.RedisOptions{})
	s := testenv.StartSentinel(t, master, "phmaster")
	url := "redis://" + s.Addr + "/0?master_name=phmaster"
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		return newBackend(t, url, redis.Options{Clock: clock})
	})
}

// Cluster, from the URL: every script keeps to one hash slot (a cluster
// refuses cross-slot scripts even with one node).
func TestContractCluster(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{Cluster: true})
	url := "redis://" + srv.Addr + "?addr=" + srv.Addr
	pooltest.Run(t, func(t *testing.T, clock pool.Clock) pool.Backend {
		return newBackend(t, url, redis.Options{Clock: clock})
	})
}

// An agent cut off from Redis for longer than the lease TTL still uses its
// IP: when it is back, it takes the IP back if no one else took it.
func TestLeaseReclaimedAfterPartition(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	link := newCutter(t, srv.Addr)
	o := redis.Options{Prefix: newPrefix(), LeaseTTL: 300 * time.Millisecond, ProbeInterval: 20 * time.Millisecond}
	a := newBackend(t, "redis://"+link.addr+"/0", o)
	b := newBackend(t, srv.URL(0), o)
	for _, be := range []*redis.Backend{a, b} {
		if err := be.Seed(ctx, "t", []string{"x", "y"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustPop(t, a, 0); got != "x" {
		t.Fatalf("a popped %q", got)
	}
	link.cut()
	testenv.Eventually(t, 5*time.Second, func() error { return wantDown(a, true) })
	time.Sleep(400 * time.Millisecond) // a's lease on x runs out
	if got := mustPop(t, b, 0); got != "y" {
		t.Fatalf("b popped %q, want y (first in the queue)", got)
	}
	link.restore()
	testenv.Eventually(t, 5*time.Second, func() error { return wantDown(a, false) })
	mustEmpty(t, b) // x is a's again
	if err := a.Push(ctx, "t", "x", time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, b, 0); got != "x" {
		t.Fatalf("b popped %q after a returned x", got)
	}
}

// A Seed (config reload) after Redis lost its data restores the pool
// first: the IP held here is not handed out again.
func TestSeedAfterDataLoss(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	o := redis.Options{Prefix: newPrefix(), LeaseTTL: 400 * time.Millisecond}
	a, b := newBackend(t, srv.URL(0), o), newBackend(t, srv.URL(0), o)
	if err := a.Seed(ctx, "t", []string{"x", "y"}); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, a, 0); got != "x" {
		t.Fatalf("a popped %q", got)
	}
	rc := goredis.NewClient(&goredis.Options{Addr: srv.Addr})
	defer rc.Close()
	if err := rc.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.Seed(ctx, "t", []string{"x", "y", "z"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Seed(ctx, "t", []string{"x", "y", "z"}); err != nil {
		t.Fatal(err)
	}
	got := []string{mustPop(t, b, 2*time.Second), mustPop(t, b, 2*time.Second)}
	slices.Sort(got)
	if !slices.Equal(got, []string{"y", "z"}) {
		t.Fatalf("b popped %v, want y and z (a holds x)", got)
	}
	mustEmpty(t, b)
}

// An IP whose lease ran out while still held here (cut off from Redis, or
// a clock jump) and that Redis hands to this agent again stays with its
// holder: no second request gets it, and the holder's return works.
func TestOwnExpiredLeaseNotHandedOutTwice(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	clock := pool.NewFakeClock(t0)
	b := newBackend(t, srv.URL(0), redis.Options{Clock: clock, LeaseTTL: time.Minute})
	if err := b.Seed(ctx, "t", []string{"x", "y"}); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, b, 0); got != "x" {
		t.Fatalf("popped %q", got)
	}
	clock.Advance(time.Minute) // x's lease runs out: Redis puts it back
	if got := mustPop(t, b, 0); got != "y" {
		t.Fatalf("popped %q, want y", got)
	}
	mustEmpty(t, b) // x came back from Redis, but it is in use here
	if err := b.Push(ctx, "t", "x", clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := mustPop(t, b, 0); got != "x" {
		t.Fatalf("after its holder returned it popped %q, want x", got)
	}
	if n := b.Held("t"); n != 2 {
		t.Fatalf("holds %d leases, want 2", n)
	}
}
