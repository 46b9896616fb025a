// Package pool holds proxy-hopper's IP pool policy: rotation, per-IP
// cooldown, failure counting and quarantine. Storage is behind Backend, so
// swapping the memory backend for Redis changes nothing above this package.
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Config is the policy of one target's pool.
type Config struct {
	// MinRequestInterval is how long an IP cools down after each use.
	MinRequestInterval time.Duration
	// MaxQueueWait is how long Acquire waits for a free IP.
	MaxQueueWait time.Duration
	// FailuresUntilQuarantine consecutive failures quarantine an IP.
	FailuresUntilQuarantine int
	// QuarantineTime is how long a quarantined IP stays out.
	QuarantineTime time.Duration
	// MaxQueueLength caps the requests of this process waiting in Acquire
	// at once; one more gets ErrQueueFull at once. 0: no cap.
	MaxQueueLength int
}

// Validate reports a policy that cannot work.
func (c Config) Validate() error {
	switch {
	case c.MinRequestInterval < 0:
		return errors.New("minRequestInterval must not be negative")
	case c.MaxQueueWait < 0:
		return errors.New("maxQueueWait must not be negative")
	case c.FailuresUntilQuarantine < 1:
		return errors.New("ipFailuresUntilQuarantine must be at least 1")
	case c.QuarantineTime < 0:
		return errors.New("quarantineTime must not be negative")
	case c.MaxQueueLength < 0:
		return errors.New("maxQueueLength must not be negative")
	}
	return nil
}

// Hooks are optional callbacks fired by pool transitions. They run
// synchronously and must not block.
type Hooks struct {
	// Quarantined is called after addr is taken out until the given time.
	Quarantined func(addr string, until time.Time)
	// QuarantinedWhy is called with Quarantined, with the cause the
	// caller put in the context of the Release, Blame or Quarantine that
	// decided it (WithCause; "" when none).
	QuarantinedWhy func(addr string, until time.Time, cause string)
	// Released is called before a quarantined addr re-enters the pool.
	Released func(addr string)
}

// Then returns hooks that call h's hooks, then next's (either may be nil).
func (h Hooks) Then(next Hooks) Hooks {
	out := h
	if a, b := h.Quarantined, next.Quarantined; a == nil {
		out.Quarantined = b
	} else if b != nil {
		out.Quarantined = func(addr string, until time.Time) { a(addr, until); b(addr, until) }
	}
	if a, b := h.QuarantinedWhy, next.QuarantinedWhy; a == nil {
		out.QuarantinedWhy = b
	} else if b != nil {
		out.QuarantinedWhy = func(addr string, until time.Time, cause string) { a(addr, until, cause); b(addr, until, cause) }
	}
	if a, b := h.Released, next.Released; a == nil {
		out.Released = b
	} else if b != nil {
		out.Released = func(addr string) { a(addr); b(addr) }
	}
	return out
}

// Outcome is the result of one use of an IP.
type Outcome uint8

const (
	// Success resets the IP's consecutive-failure count.
	Success Outcome = iota
	// Failure counts against the IP and may quarantine it.
	Failure
	// Neutral leaves the count alone: the use ended for a reason that says
	// nothing about the IP (the client's own bytes, the agent shutting down).
	Neutral
)

// Pool is the runtime pool of one target. It is safe for concurrent use and
// shares no state with other targets' pools.
type Pool struct {
	target  string
	backend Backend
	clock   Clock
	hooks   Hooks
	log     *slog.Logger
	cfg     atomic.Pointer[Config]

	mu      sync.Mutex // guards the quarantine release timer
	timer   Timer
	timerAt time.Time
	closed  bool
	unwatch func() // set by New when the backend is an ExpiryWatcher

	// held are the release times of IPs quarantined by Quarantine while
	// in use: their Release arms the release timer. nheld is len(held),
	// so that Release looks at it only when there is one.
	heldMu sync.Mutex
	held   map[string]time.Time
	nheld  atomic.Int32

	waiting atomic.Int64 // calls in Acquire now
}

// Options configures New.
type Options struct {
	Clock  Clock        // default RealClock
	Hooks  Hooks        // optional
	Logger *slog.Logger // default slog.Default()
}

// New seeds target's pool in backend with addrs and returns its policy.
// addrs may be empty: Acquire then waits up to MaxQueueWait for an IP that
// a later Update adds.
func New(ctx context.Context, target string, addrs []string, backend Backend, cfg Config, opts Options) (*Pool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("target %s: %w", target, err)
	}
	p := &Pool{target: target, backend: backend, clock: opts.Clock, hooks: opts.Hooks, log: opts.Logger}
	if p.clock == nil {
		p.clock = RealClock{}
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("component", "pool", "target", target)
	p.cfg.Store(&cfg)
	if err := backend.Seed(ctx, target, addrs); err != nil {
		return nil, fmt.Errorf("seed pool %s: %w", target, err)
	}
	// A shared backend may hold quarantines from an earlier run, or made
	// later by another process that may die before releasing them.
	p.scheduleNext(ctx)
	if w, ok := backend.(ExpiryWatcher); ok {
		p.unwatch = w.WatchExpiry(target, func() { p.scheduleNext(context.Background()) })
	}
	return p, nil
}

// Target returns the target name.
func (p *Pool) Target() string { return p.target }

// Config returns the policy in force.
func (p *Pool) Config() Config { return *p.cfg.Load() }

// Update replaces the policy and reconciles the IP set; requests in flight
// are not disturbed. New IPs are handed out at once (to requests waiting
// first); removed IPs drain: one in use leaves when it is released, and is
// never handed out again. An empty addrs removes every IP: Acquire then
// waits up to MaxQueueWait for IPs a later Update restores.
func (p *Pool) Update(ctx context.Context, addrs []string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("target %s: %w", p.target, err)
	}
	if err := p.backend.Seed(ctx, p.target, addrs); err != nil {
		return fmt.Errorf("reseed pool %s: %w", p.target, err)
	}
	p.cfg.Store(&cfg)
	return nil
}

// Acquire hands out the IP that has been free longest, waiting up to
// MaxQueueWait (FIFO among waiters). It returns ErrNoIP when none came free,
// and ErrQueueFull at once when MaxQueueLength calls of this process are in
// Acquire already (the cap is per process: with a shared backend each agent
// has its own).
func (p *Pool) Acquire(ctx context.Context) (string, error) {
	return p.acquire(ctx, nil)
}

// AcquireExcept is Acquire for a retry: tried are the IPs the request has
// used already (in the order it used them). It never hands out an IP in
// tried while the target has another IP that is not quarantined (free,
// cooling down or in use, so that it may come free within MaxQueueWait):
// it waits for one of those instead, and returns ErrNoIP if none came free
// in time. Only when every IP of the target outside quarantine was tried
// does it behave as Acquire and may hand one out again. A caller waiting
// here keeps its FIFO place among waiters; an IP it skips goes to the next
// waiter, or stays free for the next caller. MaxQueueLength applies as in
// Acquire. Only the last MaxExcept entries of tried count. With an empty
// tried it is Acquire.
func (p *Pool) AcquireExcept(ctx context.Context, tried []string) (string, error) {
	return p.acquire(ctx, ExceptSet(tried))
}

func (p *Pool) acquire(ctx context.Context, except []string) (string, error) {
	cfg := p.cfg.Load()
	n := p.waiting.Add(1)
	defer p.waiting.Add(-1)
	pop := p.backend.Pop
	if len(except) > 0 {
		pop = func(ctx context.Context, target string, timeout time.Duration) (string, error) {
			return p.backend.PopExcept(ctx, target, timeout, except)
		}
	}
	if cfg.MaxQueueLength > 0 && n > int64(cfg.MaxQueueLength) {
		// No room to wait: only an IP free right now will do.
		addr, err := pop(ctx, p.target, 0)
		if errors.Is(err, ErrNoIP) {
			return "", ErrQueueFull
		}
		return addr, err
	}
	return pop(ctx, p.target, cfg.MaxQueueWait)
}

// Waiting is the number of calls in Acquire now (waiting for an IP, or
// about to get one).
func (p *Pool) Waiting() int { return int(p.waiting.Load()) }

// Release returns addr after a use (of an IP from Acquire or TryTake).
// Success resets its failure count; a failure counts, and at the threshold
// quarantines it; Neutral does neither. Either way a non-quarantined IP
// comes back after MinRequestInterval (an IP that Quarantine marked while
// in use goes into quarantine instead). If the backend fails to count or
// to quarantine, the IP still comes back (an IP never pushed back would be
// lost to the pool for good) and the error is returned.
func (p *Pool) Release(ctx context.Context, addr string, outcome Outcome) error {
	if p.nheld.Load() > 0 {
		if until, ok := p.unhold(addr); ok {
			// Quarantined while in use: the backend puts it in
			// quarantine now; the timer must see it.
			err := p.release(ctx, addr, outcome)
			p.schedule(until)
			return err
		}
	}
	return p.release(ctx, addr, outcome)
}

func (p *Pool) release(ctx context.Context, addr string, outcome Outcome) error {
	cfg := p.cfg.Load()
	now := p.clock.Now()
	readyAt := now.Add(cfg.MinRequestInterval)
	switch outcome {
	case Neutral:
		return p.push(ctx, addr, readyAt)
	case Success:
		if err := p.backend.ResetFailures(ctx, p.target, addr); err != nil {
			return errors.Join(fmt.Errorf("reset failures of %s: %w", addr, err), p.push(ctx, addr, readyAt))
		}
		return p.push(ctx, addr, readyAt)
	}
	n, err := p.backend.IncrFailures(ctx, p.target, addr)
	if err != nil {
		return errors.Join(fmt.Errorf("count failure of %s: %w", addr, err), p.push(ctx, addr, readyAt))
	}
	if n < cfg.FailuresUntilQuarantine {
		return p.push(ctx, addr, readyAt)
	}
	until := now.Add(cfg.QuarantineTime)
	if err := p.backend.Quarantine(ctx, p.target, addr, until); err != nil {
		return errors.Join(fmt.Errorf("quarantine %s: %w", addr, err), p.push(ctx, addr, readyAt))
	}
	p.log.Warn("ip quarantined", "address", addr, "failures", n, "until", until)
	p.quarantined(ctx, addr, until)
	p.schedule(until)
	return nil
}

// quarantined fires the quarantine hooks.
func (p *Pool) quarantined(ctx context.Context, addr string, until time.Time) {
	if p.hooks.Quarantined != nil {
		p.hooks.Quarantined(addr, until)
	}
	if p.hooks.QuarantinedWhy != nil {
		p.hooks.QuarantinedWhy(addr, until, CauseOf(ctx))
	}
}

// Blame counts a failure against addr after its use ended: the caller
// released it Neutral while it could not tell whose fault the use's
// failure was, and learned later that it was the IP's. At
// FailuresUntilQuarantine consecutive failures the IP is quarantined as
// Quarantine does (an IP in use again goes when it is released). A success
// in between resets the count as usual. ErrUnknownIP if addr is not in
// the pool.
func (p *Pool) Blame(ctx context.Context, addr string) error {
	cfg := p.cfg.Load()
	n, err := p.backend.IncrFailures(ctx, p.target, addr)
	if err != nil {
		return fmt.Errorf("count failure of %s: %w", addr, err)
	}
	if n < cfg.FailuresUntilQuarantine {
		return nil
	}
	return p.Quarantine(ctx, addr, p.clock.Now().Add(cfg.QuarantineTime))
}

func (p *Pool) push(ctx context.Context, addr string, at time.Time) error {
	if err := p.backend.Push(ctx, p.target, addr, at); err != nil {
		return fmt.Errorf("return %s to pool: %w", addr, err)
	}
	return nil
}

// schedule arms the single release timer for the earliest quarantine end.
func (p *Pool) schedule(at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || (p.timer != nil && !p.timerAt.After(at)) {
		return
	}
	if p.timer != nil {
		p.timer.Stop()
	}
	p.timerAt = at
	p.timer = p.clock.AfterFunc(at.Sub(p.clock.Now()), p.releaseExpired)
}

// releaseExpired moves every quarantined IP whose time is up back into the
// pool with a clean failure count, then re-arms the timer.
func (p *Pool) releaseExpired() {
	p.mu.Lock()
	p.timer = nil
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return
	}
	ctx := context.Background()
	now := p.clock.Now()
	addrs, err := p.backend.PopExpired(ctx, p.target, now)
	if err != nil {
		p.log.Error("release quarantined IPs", "err", err)
		p.schedule(now.Add(time.Second)) // try again shortly
		return
	}
	for _, addr := range addrs {
		if p.hooks.Released != nil {
			p.hooks.Released(addr)
		}
		if err := p.backend.ResetFailures(ctx, p.target, addr); err != nil {
			p.log.Error("reset failures after quarantine", "address", addr, "err", err)
		}
		if err := p.backend.Push(ctx, p.target, addr, now); err != nil {
			p.log.Error("return quarantined IP", "address", addr, "err", err)
			continue
		}
		p.log.Info("ip released from quarantine", "address", addr)
	}
	p.scheduleNext(ctx)
}

// scheduleNext arms the release timer for the backend's earliest quarantine
// end. If the backend cannot say, it asks again shortly: giving up would
// leave every quarantined IP out of the pool for good.
func (p *Pool) scheduleNext(ctx context.Context) {
	at, ok, err := p.backend.NextExpiry(ctx, p.target)
	switch {
	case err != nil:
		p.log.Error("find next quarantine release", "err", err)
		p.schedule(p.clock.Now().Add(time.Second))
	case ok:
		p.schedule(at)
	}
}

// Snapshot lists the pool's IPs and their states.
func (p *Pool) Snapshot(ctx context.Context) ([]IPState, error) {
	return p.backend.Snapshot(ctx, p.target)
}

// TryTake takes addr out of the pool if it is available right now (not in
// use, not cooling, not quarantined, and no request of this process waiting
// for an IP), as Acquire would, without waiting. ok is false otherwise. The
// caller gives it back with Release, like an acquired IP. ErrUnknownIP if
// addr is not in the pool.
func (p *Pool) TryTake(ctx context.Context, addr string) (ok bool, err error) {
	ok, err = p.backend.Take(ctx, p.target, addr)
	if err != nil {
		return false, fmt.Errorf("take %s: %w", addr, err)
	}
	return ok, nil
}

// Quarantine takes addr out of the pool until `until`, whatever its state:
// an available or cooling IP leaves the queue at once, a quarantined one
// gets the new release time; an IP in use goes into quarantine when it is
// released (its Release does not put it back in the queue), unless until
// has passed by then. It fires Hooks.Quarantined and arms the release timer
// like a failure-driven quarantine. The failure count is left alone.
// ErrUnknownIP if addr is not in the pool.
func (p *Pool) Quarantine(ctx context.Context, addr string, until time.Time) error {
	// Recorded first: a Release racing with Hold then arms the timer.
	p.heldMu.Lock()
	if p.held == nil {
		p.held = map[string]time.Time{}
	}
	p.held[addr] = until
	p.nheld.Store(int32(len(p.held)))
	p.heldMu.Unlock()
	inUse, err := p.backend.Hold(ctx, p.target, addr, until)
	if err != nil || !inUse {
		p.unhold(addr)
	}
	if err != nil {
		return fmt.Errorf("quarantine %s: %w", addr, err)
	}
	p.log.Warn("ip quarantined", "address", addr, "until", until, "in_use", inUse)
	p.quarantined(ctx, addr, until)
	p.schedule(until)
	return nil
}

// unhold forgets addr's entry in held, and every entry whose time has
// passed (their IPs are no longer to be quarantined when released). It
// returns addr's release time.
func (p *Pool) unhold(addr string) (time.Time, bool) {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	until, ok := p.held[addr]
	delete(p.held, addr)
	now := p.clock.Now()
	for a, u := range p.held {
		if !u.After(now) {
			delete(p.held, a)
		}
	}
	p.nheld.Store(int32(len(p.held)))
	return until, ok
}

// ReleaseQuarantine puts a quarantined addr back at once, at the end of
// the queue with its failure count reset, firing Hooks.Released first
// (as the release timer does). For an IP in use that Quarantine marked, it
// cancels the mark: the IP comes back normally when released.
// ErrNotQuarantined for any other IP, ErrUnknownIP if addr is not in the pool.
func (p *Pool) ReleaseQuarantine(ctx context.Context, addr string) error {
	inUse, err := p.backend.Unquarantine(ctx, p.target, addr)
	if err != nil {
		return fmt.Errorf("release %s from quarantine: %w", addr, err)
	}
	p.unhold(addr)
	if p.hooks.Released != nil {
		p.hooks.Released(addr)
	}
	var errs []error
	if err := p.backend.ResetFailures(ctx, p.target, addr); err != nil {
		errs = append(errs, fmt.Errorf("reset failures of %s: %w", addr, err))
	}
	if !inUse {
		// Pushed even if the reset failed: an IP never pushed back would
		// be lost to the pool for good.
		errs = append(errs, p.push(ctx, addr, p.clock.Now()))
	}
	p.log.Info("ip released from quarantine early", "address", addr, "in_use", inUse)
	return errors.Join(errs...)
}

// State returns addr's state, as Snapshot lists it. ErrUnknownIP if addr is
// not in the pool.
func (p *Pool) State(ctx context.Context, addr string) (IPState, error) {
	return p.backend.State(ctx, p.target, addr)
}

// Close stops the release timer. Waiters are released by closing the backend.
func (p *Pool) Close() {
	if p.unwatch != nil {
		p.unwatch()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
}
