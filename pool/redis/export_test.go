package redis

// Crash stops the backend as a killed process would: no returns, no
// renewals, connection gone; its leases stay in Redis until they run out.
func (b *Backend) Crash() {
	b.closed.Store(true)
	b.failWaiters(errDown)
	b.finish()
}

// Down reports whether the backend considers Redis unreachable.
func (b *Backend) Down() bool { return b.down.Load() }

// Held reports how many leases this backend holds for target.
func (b *Backend) Held(name string) int {
	t := b.target(name)
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.leases)
}

// LoopDone is closed when the maintenance goroutine has ended.
func (b *Backend) LoopDone() <-chan struct{} { return b.loopDone }
