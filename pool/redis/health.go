package redis

import (
	"context"
	"errors"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// markDown records that Redis cannot be reached. Only the change is
// logged; blocked callers are answered at once.
func (b *Backend) markDown(err error) {
	if b.finished() || !b.down.CompareAndSwap(false, true) {
		return
	}
	b.downSince.Store(time.Now().UnixNano())
	b.log.Error("redis unavailable: pool operations fail until it is back", "err", err)
	b.failWaiters(errDown)
}

// loop renews this agent's leases every LeaseTTL/3 and tells pools to look
// at the quarantine schedule; while Redis is down it probes it instead.
func (b *Backend) loop() {
	defer close(b.loopDone)
	renew := time.NewTicker(max(b.opts.LeaseTTL/3, time.Millisecond))
	defer renew.Stop()
	probe := time.NewTicker(b.opts.ProbeInterval)
	defer probe.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-probe.C:
			if b.down.Load() {
				b.recover()
			}
		case <-renew.C:
			if !b.down.Load() {
				b.renewAll(false)
				b.notifyWatchers()
			}
		case <-b.renewNow:
			if !b.down.Load() {
				b.renewAll(false)
			}
		}
	}
}

// recover brings the backend up if Redis answers: pools Redis lost are
// seeded again, returns kept during the outage replayed, leases renewed.
func (b *Backend) recover() {
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.LeaseTTL)
	defer cancel()
	pctx, pcancel := context.WithTimeout(ctx, b.opts.ProbeInterval+defaultIOTimeout)
	err := b.client.Ping(pctx).Err()
	pcancel()
	if err != nil {
		return
	}
	var targets []*target
	b.targets.Range(func(_, v any) bool {
		targets = append(targets, v.(*target))
		return true
	})
	for _, t := range targets {
		t.mu.Lock()
		seeded := t.addrs != nil
		t.mu.Unlock()
		if seeded && !b.reseed(ctx, t) {
			return // still not usable; try again at the next probe
		}
	}
	if !b.renewAll(true) {
		return
	}
	b.down.Store(false)
	b.log.Info("redis available again", "down", time.Since(time.Unix(0, b.downSince.Load())).Round(time.Millisecond))
	for _, t := range targets {
		t.signal()
	}
	b.notifyWatchers()
}

// renewAll replays kept returns and moves the deadline of every lease this
// agent holds. Leases Redis no longer has (given to another agent after
// they ran out) are dropped. It reports whether Redis answered each time;
// force runs it while the backend is down, to recover.
func (b *Backend) renewAll(force bool) bool {
	ok := true
	b.targets.Range(func(_, v any) bool {
		ok = b.renew(v.(*target), force) && !b.finished()
		return ok
	})
	return ok
}

func (b *Backend) renew(t *target, force bool) bool {
	t.returning.Lock()
	defer t.returning.Unlock()
	run := b.run
	if force {
		run = b.do
	}
	type held struct {
		addr string
		l    *lease
	}
	var pending []held
	args := []any{int64(0), int64(0)}
	t.mu.Lock()
	for a, l := range t.leases {
		if l.pending {
			pending = append(pending, held{a, l})
		} else {
			args = append(args, a, l.token)
		}
	}
	t.mu.Unlock()
	for _, p := range pending {
		t.mu.Lock()
		if t.leases[p.addr] != p.l {
			t.mu.Unlock()
			continue
		}
		delete(t.leases, p.addr)
		t.mu.Unlock()
		now := b.clock.Now()
		_, err := run(b.ctx, t, pushScript, msFloor(now), p.addr, p.l.token, readyMs(p.l.readyAt, now), flag(p.l.reset))
		if err != nil && errors.Is(err, pool.ErrBackendUnavailable) {
			b.keep(t, p.addr, p.l, p.l.readyAt)
			return false
		}
		b.release(1)
		if err == nil {
			t.signal()
		}
	}
	if len(args) == 2 {
		return true
	}
	now := msFloor(b.clock.Now())
	args[0], args[1] = now+b.opts.LeaseTTL.Milliseconds(), now
	res, err := run(b.ctx, t, renewScript, args...)
	if err != nil {
		if errors.Is(err, pool.ErrBackendUnavailable) || errors.Is(err, pool.ErrClosed) {
			return false
		}
		b.log.Error("renew leases", "target", t.name, "err", err)
		return true
	}
	lost, _ := res.([]any)
	if len(lost) == 0 {
		return true
	}
	tokens := map[string]string{}
	for i := 2; i+1 < len(args); i += 2 {
		tokens[args[i].(string)] = args[i+1].(string)
	}
	n := 0
	t.mu.Lock()
	for _, v := range lost {
		a, _ := v.(string)
		if l, ok := t.leases[a]; ok && !l.pending && l.token == tokens[a] {
			delete(t.leases, a)
			n++
		}
	}
	t.mu.Unlock()
	if n > 0 {
		b.release(int64(n))
		b.log.Warn("leases lost: their IPs went back to the pool while held here", "target", t.name, "count", n)
	}
	return true
}
