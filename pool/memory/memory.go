// Package memory is the single-process pool.Backend: per-target queues in
// memory, each with its own lock, no goroutine or timer per IP.
package memory

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

var _ pool.Backend = (*Backend)(nil)

// Backend stores pools in process memory.
type Backend struct {
	clock   pool.Clock
	targets sync.Map // name -> *target
	closeMu sync.Mutex
	closed  bool
}

// New returns an empty backend; nil clock means the wall clock.
func New(clock pool.Clock) *Backend {
	if clock == nil {
		clock = pool.RealClock{}
	}
	return &Backend{clock: clock}
}

type entry struct {
	addr     string
	state    pool.State
	at       time.Time // cooling: ready at; quarantined: until; in-use: since
	seq      uint64
	index    int // position in a schedule, -1 when in none
	failures int
	removed  bool      // left the configured set while in use
	hold     time.Time // in use: quarantine until then when pushed back (Hold)
}

type waiter struct {
	except []string // PopExcept's set; nil for Pop
	ch     chan struct{}
	addr   string
	err    error
	served bool
}

// target is one pool; mu guards everything below it.
type target struct {
	mu         sync.Mutex
	clock      pool.Clock
	ips        map[string]*entry
	ready      ring
	cooling    schedule
	quarantine schedule
	waiters    []*waiter
	timer      pool.Timer
	timerAt    time.Time
	closed     bool
}

func (b *Backend) get(name string) (*target, error) {
	t, ok := b.targets.Load(name)
	if !ok {
		return nil, fmt.Errorf("%w: %s", pool.ErrUnknownTarget, name)
	}
	return t.(*target), nil
}

// Seed implements pool.Backend.
func (b *Backend) Seed(_ context.Context, name string, addrs []string) error {
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		return pool.ErrClosed
	}
	v, _ := b.targets.LoadOrStore(name, &target{clock: b.clock, ips: map[string]*entry{}})
	b.closeMu.Unlock()
	t := v.(*target)
	t.mu.Lock()
	defer t.mu.Unlock()
	// IPs whose cooldown is over were free before the new ones join.
	t.promote(t.clock.Now())
	want := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		want[a] = true
		if e, ok := t.ips[a]; ok {
			e.removed = false
			continue
		}
		e := &entry{addr: a, state: pool.StateAvailable, index: -1}
		t.ips[a] = e
		t.ready.push(e)
	}
	for a, e := range t.ips {
		if want[a] {
			continue
		}
		switch e.state {
		case pool.StateAvailable:
			t.ready.remove(e)
		case pool.StateCooling:
			t.cooling.removeAt(e.index)
		case pool.StateQuarantined:
			t.quarantine.removeAt(e.index)
		case pool.StateInUse:
			e.removed = true // drains: gone when pushed back
			continue
		}
		delete(t.ips, a)
	}
	t.dispatch(t.clock.Now())
	return nil
}

// Pop implements pool.Backend.
func (b *Backend) Pop(ctx context.Context, name string, timeout time.Duration) (string, error) {
	return b.pop(ctx, name, timeout, nil)
}

// PopExcept implements pool.Backend.
func (b *Backend) PopExcept(ctx context.Context, name string, timeout time.Duration, except []string) (string, error) {
	return b.pop(ctx, name, timeout, pool.ExceptSet(except))
}

// pop is Pop and PopExcept. Every change under mu that can give a waiter
// an IP it may take ends with dispatch, so a waiter never sits while the
// ready queue holds an IP for it: a new caller that finds one it may take
// takes it without overtaking anyone.
func (b *Backend) pop(ctx context.Context, name string, timeout time.Duration, except []string) (string, error) {
	t, err := b.get(name)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return "", pool.ErrClosed
	}
	if t.cooling.len() > 0 {
		// Cooled-down IPs go to earlier waiters first; the timer that
		// would hand them out may not have fired yet.
		t.dispatch(t.clock.Now())
	}
	if i := t.pick(except); i >= 0 {
		e := t.take(i)
		t.mu.Unlock()
		return e.addr, nil
	}
	if timeout <= 0 {
		t.mu.Unlock()
		return "", pool.ErrNoIP
	}
	w := &waiter{except: except, ch: make(chan struct{})}
	t.waiters = append(t.waiters, w)
	t.arm()
	// The timeout starts with the wait, under mu: once a caller is counted
	// by Waiting, its deadline is fixed.
	expired := make(chan struct{})
	tm := t.clock.AfterFunc(timeout, func() { close(expired) })
	t.mu.Unlock()
	defer tm.Stop()
	var cause error
	select {
	case <-w.ch:
		return w.addr, w.err
	case <-expired:
		cause = pool.ErrNoIP
	case <-ctx.Done():
		cause = ctx.Err()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.served { // served while we gave up: keep the IP rather than lose it
		return w.addr, w.err
	}
	if i := slices.Index(t.waiters, w); i >= 0 {
		t.waiters = slices.Delete(t.waiters, i, i+1)
	}
	return "", cause
}

// take takes the i-th IP of the ready queue (from pick) and marks it in
// use. Caller holds mu.
func (t *target) take(i int) *entry {
	e := t.ready.removeAt(i)
	e.state = pool.StateInUse
	e.at = t.clock.Now()
	return e
}

// pick returns the position in the ready queue of the IP a caller that
// may not have except gets: the head, or with a non-empty except the
// first IP outside it among the first len(except)+1 (there is one if the
// queue is that long), unless every IP outside quarantine is in except.
// -1 if there is none. O(len(except)) map and queue look-ups. Caller
// holds mu.
func (t *target) pick(except []string) int {
	if t.ready.len() == 0 {
		return -1
	}
	if len(except) == 0 || !t.untriedLeft(except) {
		return 0
	}
	for i := range min(t.ready.len(), len(except)+1) {
		if !slices.Contains(except, t.ready.at(i).addr) {
			return i
		}
	}
	return -1
}

// untriedLeft reports whether target has an IP outside except (a set,
// without duplicates) that is not quarantined. Caller holds mu.
func (t *target) untriedLeft(except []string) bool {
	n := len(t.ips) - t.quarantine.len()
	for _, a := range except {
		if e, ok := t.ips[a]; ok && e.state != pool.StateQuarantined {
			n--
		}
	}
	return n > 0
}

// promote moves cooled-down IPs to the ready queue. Caller holds mu.
func (t *target) promote(now time.Time) {
	for t.cooling.len() > 0 && !t.cooling.peek().at.After(now) {
		e := t.cooling.pop()
		e.state = pool.StateAvailable
		t.ready.push(e)
	}
}

// dispatch hands ready IPs to waiters in arrival order: each waiter gets
// the IP pick gives it; a waiter that may take none of them keeps its
// place and the next one is served. Caller holds mu.
func (t *target) dispatch(now time.Time) {
	t.promote(now)
	for i := 0; i < len(t.waiters) && t.ready.len() > 0; {
		w := t.waiters[i]
		j := t.pick(w.except)
		if j < 0 {
			i++
			continue
		}
		if i == 0 {
			t.waiters[0] = nil
			t.waiters = t.waiters[1:]
		} else {
			t.waiters = slices.Delete(t.waiters, i, i+1)
		}
		w.addr, w.served = t.take(j).addr, true
		close(w.ch)
	}
	t.arm()
}

// arm keeps one timer at the earliest cooldown end while anyone waits.
// Caller holds mu.
func (t *target) arm() {
	if len(t.waiters) == 0 || t.cooling.len() == 0 {
		return
	}
	at := t.cooling.peek().at
	if t.timer != nil {
		if !t.timerAt.After(at) {
			return
		}
		t.timer.Stop()
	}
	t.timerAt = at
	t.timer = t.clock.AfterFunc(at.Sub(t.clock.Now()), func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.timer = nil
		t.dispatch(t.clock.Now())
	})
}

// Push implements pool.Backend. Pushing an IP that is not in use is a no-op,
// so an IP can never be queued twice.
func (b *Backend) Push(_ context.Context, name, addr string, readyAt time.Time) error {
	t, err := b.get(name)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.ips[addr]
	if !ok || e.state != pool.StateInUse {
		return nil
	}
	now := t.clock.Now()
	if e.removed {
		delete(t.ips, addr)
		t.dispatch(now) // one IP fewer: a PopExcept waiter may take a tried one now
		return nil
	}
	if !e.hold.IsZero() {
		until := e.hold
		e.hold = time.Time{}
		if until.After(now) {
			e.state = pool.StateQuarantined
			t.quarantine.push(e, until)
			t.dispatch(now)
			return nil
		}
	}
	if readyAt.After(now) {
		e.state = pool.StateCooling
		t.cooling.push(e, readyAt)
		t.arm()
		return nil
	}
	// IPs whose cooldown ended before now queue ahead of this one.
	t.promote(now)
	e.state = pool.StateAvailable
	t.ready.push(e)
	t.dispatch(now)
	return nil
}

func (b *Backend) withEntry(name, addr string, f func(*target, *entry)) error {
	t, err := b.get(name)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.ips[addr]; ok {
		f(t, e)
	}
	return nil
}

// IncrFailures implements pool.Backend.
func (b *Backend) IncrFailures(_ context.Context, name, addr string) (int, error) {
	n := 0
	err := b.withEntry(name, addr, func(_ *target, e *entry) { e.failures++; n = e.failures })
	return n, err
}

// ResetFailures implements pool.Backend.
func (b *Backend) ResetFailures(_ context.Context, name, addr string) error {
	return b.withEntry(name, addr, func(_ *target, e *entry) { e.failures = 0 })
}

// Quarantine implements pool.Backend.
func (b *Backend) Quarantine(_ context.Context, name, addr string, until time.Time) error {
	return b.withEntry(name, addr, func(t *target, e *entry) {
		switch e.state {
		case pool.StateAvailable:
			t.ready.remove(e)
		case pool.StateCooling:
			t.cooling.removeAt(e.index)
		case pool.StateQuarantined:
			t.quarantine.removeAt(e.index)
		}
		e.state, e.hold = pool.StateQuarantined, time.Time{}
		t.quarantine.push(e, until)
		// One IP fewer outside quarantine: a PopExcept waiter may take
		// an IP it tried now.
		t.dispatch(t.clock.Now())
	})
}

// entry returns addr's entry of target with the target locked; the caller
// unlocks t.mu.
func (b *Backend) entry(name, addr string) (*target, *entry, error) {
	t, err := b.get(name)
	if err != nil {
		return nil, nil, err
	}
	t.mu.Lock()
	e, ok := t.ips[addr]
	if !ok {
		t.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: %s", pool.ErrUnknownIP, addr)
	}
	return t, e, nil
}

// Take implements pool.Backend.
func (b *Backend) Take(_ context.Context, name, addr string) (bool, error) {
	t, e, err := b.entry(name, addr)
	if err != nil {
		return false, err
	}
	defer t.mu.Unlock()
	if t.closed {
		return false, pool.ErrClosed
	}
	// Waiters come first: this hands them what cooled down meanwhile.
	t.dispatch(t.clock.Now())
	if e.state != pool.StateAvailable || len(t.waiters) > 0 {
		return false, nil
	}
	t.ready.remove(e)
	e.state, e.at = pool.StateInUse, t.clock.Now()
	return true, nil
}

// Hold implements pool.Backend.
func (b *Backend) Hold(_ context.Context, name, addr string, until time.Time) (bool, error) {
	t, e, err := b.entry(name, addr)
	if err != nil {
		return false, err
	}
	defer t.mu.Unlock()
	switch e.state {
	case pool.StateInUse:
		e.hold = until
		return true, nil
	case pool.StateAvailable:
		t.ready.remove(e)
	case pool.StateCooling:
		t.cooling.removeAt(e.index)
	case pool.StateQuarantined:
		t.quarantine.removeAt(e.index)
	}
	e.state = pool.StateQuarantined
	t.quarantine.push(e, until)
	t.dispatch(t.clock.Now()) // as in Quarantine
	return false, nil
}

// Unquarantine implements pool.Backend.
func (b *Backend) Unquarantine(_ context.Context, name, addr string) (bool, error) {
	t, e, err := b.entry(name, addr)
	if err != nil {
		return false, err
	}
	defer t.mu.Unlock()
	switch {
	case e.state == pool.StateQuarantined:
		t.quarantine.removeAt(e.index)
		e.state, e.at = pool.StateInUse, t.clock.Now()
		return false, nil
	case e.state == pool.StateInUse && !e.hold.IsZero():
		e.hold = time.Time{}
		return true, nil
	}
	return false, fmt.Errorf("%w: %s is %s", pool.ErrNotQuarantined, addr, e.view(t.clock.Now()).State)
}

// State implements pool.Backend.
func (b *Backend) State(_ context.Context, name, addr string) (pool.IPState, error) {
	t, e, err := b.entry(name, addr)
	if err != nil {
		return pool.IPState{}, err
	}
	defer t.mu.Unlock()
	return e.view(t.clock.Now()), nil
}

// view is e as Snapshot lists it. Caller holds the target's mu.
func (e *entry) view(now time.Time) pool.IPState {
	s := pool.IPState{Addr: e.addr, State: e.state, Failures: e.failures}
	switch e.state {
	case pool.StateCooling:
		if !e.at.After(now) {
			s.State = pool.StateAvailable
		} else {
			s.Until = e.at
		}
	case pool.StateInUse:
		s.Until, s.PendingQuarantine = e.at, e.hold
	case pool.StateQuarantined:
		s.Until = e.at
	}
	return s
}

// PopExpired implements pool.Backend. Returned IPs are in use until pushed.
func (b *Backend) PopExpired(_ context.Context, name string, now time.Time) ([]string, error) {
	t, err := b.get(name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for t.quarantine.len() > 0 && !t.quarantine.peek().at.After(now) {
		e := t.quarantine.pop()
		if e.removed {
			delete(t.ips, e.addr)
			continue
		}
		e.state, e.at = pool.StateInUse, now
		out = append(out, e.addr)
	}
	return out, nil
}

// NextExpiry implements pool.Backend.
func (b *Backend) NextExpiry(_ context.Context, name string) (time.Time, bool, error) {
	t, err := b.get(name)
	if err != nil {
		return time.Time{}, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.quarantine.len() == 0 {
		return time.Time{}, false, nil
	}
	return t.quarantine.peek().at, true, nil
}

// Snapshot implements pool.Backend; IPs are sorted by address.
func (b *Backend) Snapshot(_ context.Context, name string) ([]pool.IPState, error) {
	t, err := b.get(name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	out := make([]pool.IPState, 0, len(t.ips))
	for _, e := range t.ips {
		out = append(out, e.view(now))
	}
	slices.SortFunc(out, func(a, b pool.IPState) int {
		switch {
		case a.Addr < b.Addr:
			return -1
		case a.Addr > b.Addr:
			return 1
		}
		return 0
	})
	return out, nil
}

// Waiting reports how many callers are blocked in Pop for target.
func (b *Backend) Waiting(name string) int {
	t, err := b.get(name)
	if err != nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.waiters)
}

// Close implements pool.Backend: every waiter gets pool.ErrClosed and later
// Pops fail at once. Pushes are still accepted so in-flight work can finish.
func (b *Backend) Close() error {
	b.closeMu.Lock()
	b.closed = true
	b.closeMu.Unlock()
	b.targets.Range(func(_, v any) bool {
		t := v.(*target)
		t.mu.Lock()
		t.closed = true
		for _, w := range t.waiters {
			w.err, w.served = pool.ErrClosed, true
			close(w.ch)
		}
		t.waiters = nil
		if t.timer != nil {
			t.timer.Stop()
			t.timer = nil
		}
		t.mu.Unlock()
		return true
	})
	return nil
}
