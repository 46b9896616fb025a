package redis

import (
	"context"
	"slices"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// wait queues the caller until the dispatcher serves it, its timeout
// (on the backend's clock) runs out, or ctx ends.
func (b *Backend) wait(ctx context.Context, t *target, timeout time.Duration, except []string) (string, error) {
	w := &waiter{except: except, ch: make(chan popResult, 1), noWait: timeout <= 0}
	var expired chan struct{}
	t.mu.Lock()
	switch {
	case b.closed.Load():
		t.mu.Unlock()
		return "", pool.ErrClosed
	case b.down.Load():
		t.mu.Unlock()
		return "", errDown
	}
	// A caller behind PopExcept waiters may find an IP they skipped:
	// the dispatcher looks now rather than at its next poll.
	skipping := slices.ContainsFunc(slices.Concat(t.queue, t.batch), func(w *waiter) bool { return w.except != nil })
	t.queue = append(t.queue, w)
	if w.noWait || skipping {
		t.signal()
	} else {
		// The timeout starts under mu: once Waiting counts the caller,
		// its deadline is fixed.
		expired = make(chan struct{})
		tm := b.clock.AfterFunc(timeout, func() { close(expired) })
		defer tm.Stop()
	}
	if !t.running {
		t.running = true
		go b.dispatch(t)
	}
	t.mu.Unlock()
	var cause error
	select {
	case r := <-w.ch:
		return r.addr, r.err
	case <-expired:
		cause = pool.ErrNoIP
	case <-ctx.Done():
		cause = ctx.Err()
	}
	t.mu.Lock()
	if w.done { // served while giving up: keep the IP rather than lose it
		t.mu.Unlock()
		r := <-w.ch
		return r.addr, r.err
	}
	w.gone = true
	if i := slices.Index(t.queue, w); i >= 0 {
		t.queue = slices.Delete(t.queue, i, i+1)
	}
	t.mu.Unlock()
	return "", cause
}

// dispatch fetches IPs for t's queue, as many per round trip as there are
// callers, until the queue is empty. Between fetches that come back short
// it sleeps until this agent returns an IP, the next cooldown end or lease
// deadline Redis told of, or the poll interval (1ms doubling to
// PollInterval), whichever is first.
func (b *Backend) dispatch(t *target) {
	backoff := pollMin
	for {
		t.mu.Lock()
		if len(t.queue) == 0 {
			t.running = false
			t.mu.Unlock()
			return
		}
		batch := t.queue
		t.queue = nil
		t.batch = batch
		t.mu.Unlock()

		if slices.ContainsFunc(batch, func(w *waiter) bool { return w.except != nil }) {
			next, served, err := b.dispatchEach(t, batch)
			if served || err != nil {
				backoff = pollMin
				continue
			}
			b.sleep(t, next, backoff)
			backoff = min(2*backoff, b.opts.PollInterval)
			continue
		}
		addrs, next, err := b.pop(b.ctx, t, len(batch))

		t.mu.Lock()
		var rest []*waiter
		served := 0
		for _, w := range batch {
			switch {
			case w.done || w.gone:
			case err != nil:
				w.done = true
				w.ch <- popResult{err: err}
			case served < len(addrs):
				w.done = true
				w.ch <- popResult{addr: addrs[served]}
				served++
			case w.noWait:
				w.done = true
				w.ch <- popResult{err: pool.ErrNoIP}
			default:
				rest = append(rest, w)
			}
		}
		t.batch = nil
		t.queue = append(rest, t.queue...)
		t.mu.Unlock()
		// IPs fetched for callers who gave up meanwhile go back.
		for _, a := range addrs[served:] {
			_ = b.Push(b.ctx, t.name, a, time.Time{})
		}
		if len(addrs) > 0 || err != nil {
			backoff = pollMin
			continue
		}
		b.sleep(t, next, backoff)
		backoff = min(2*backoff, b.opts.PollInterval)
	}
}

// dispatchEach is one round of dispatch for a batch with PopExcept
// callers: each caller gets the IP fetched for it, if any. It reports
// whether anyone was served.
func (b *Backend) dispatchEach(t *target, batch []*waiter) (next int64, served bool, err error) {
	excepts := make([][]string, len(batch))
	for i, w := range batch {
		excepts[i] = w.except
	}
	addrs, next, err := b.popEach(b.ctx, t, excepts)
	var back []string
	t.mu.Lock()
	var rest []*waiter
	for i, w := range batch {
		a := ""
		if err == nil {
			a = addrs[i]
		}
		switch {
		case w.done || w.gone:
			if a != "" {
				back = append(back, a)
			}
		case err != nil:
			w.done = true
			w.ch <- popResult{err: err}
		case a != "":
			w.done = true
			w.ch <- popResult{addr: a}
			served = true
		case w.noWait:
			w.done = true
			w.ch <- popResult{err: pool.ErrNoIP}
		default:
			rest = append(rest, w)
		}
	}
	t.batch = nil
	t.queue = append(rest, t.queue...)
	t.mu.Unlock()
	// IPs fetched for callers who gave up meanwhile go back.
	for _, a := range back {
		_ = b.Push(b.ctx, t.name, a, time.Time{})
	}
	return next, served || len(back) > 0, err
}

func (b *Backend) sleep(t *target, next int64, poll time.Duration) {
	var event chan struct{}
	if next > 0 {
		event = make(chan struct{})
		tm := b.clock.AfterFunc(time.UnixMilli(next).Sub(b.clock.Now()), func() { close(event) })
		defer tm.Stop()
	}
	tm := time.NewTimer(poll)
	defer tm.Stop()
	select {
	case <-t.wake:
	case <-event:
	case <-tm.C:
	case <-b.stop:
	}
}

// failWaiters answers every caller blocked on any target with err.
func (b *Backend) failWaiters(err error) {
	b.targets.Range(func(_, v any) bool {
		t := v.(*target)
		t.mu.Lock()
		for _, w := range slices.Concat(t.queue, t.batch) {
			if !w.done && !w.gone {
				w.done = true
				w.ch <- popResult{err: err}
			}
		}
		t.queue = nil
		t.mu.Unlock()
		return true
	})
}

// Waiting reports how many callers are blocked in Pop for target in this
// agent (callers of other agents are not counted).
func (b *Backend) Waiting(name string) int {
	v, ok := b.targets.Load(name)
	if !ok {
		return 0
	}
	t := v.(*target)
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, w := range slices.Concat(t.queue, t.batch) {
		if !w.done && !w.gone && !w.noWait {
			n++
		}
	}
	return n
}
