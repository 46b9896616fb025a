package proxy

import (
	"context"
	"errors"
	"sync"
	"time"
)

// errClientGone is the cause of a wait ended because the client hung up.
var errClientGone = errors.New("client closed the connection")

// watchDelay is how long a wait for an IP goes on before the client
// connection is watched: most waits end sooner, and cost only a timer.
const watchDelay = 5 * time.Millisecond

// clientWatch ends a request's wait for an IP when its client hangs up, so
// a queue of abandoned requests does not hold IPs for nobody. It reads the
// client connection (a Peek: nothing is consumed) only while the request
// waits, and only when the client has nothing left to send for it.
type clientWatch struct {
	cc     *clientConn
	cancel context.CancelCauseFunc
	timer  *time.Timer
	done   chan struct{}

	mu      sync.Mutex
	running bool
	stopped bool
}

func watchClient(cc *clientConn, cancel context.CancelCauseFunc) *clientWatch {
	w := &clientWatch{cc: cc, cancel: cancel, done: make(chan struct{})}
	w.timer = time.AfterFunc(watchDelay, w.run)
	return w
}

func (w *clientWatch) run() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	// Under the lock, so stop's deadline in the past comes after this.
	_ = w.cc.c.SetReadDeadline(time.Time{})
	w.running = true
	w.mu.Unlock()
	defer close(w.done)
	if _, err := w.cc.br.Peek(1); err != nil && !isTimeout(err) {
		w.cancel(errClientGone)
	}
	// Bytes (a pipelined request, early tunnel data) stay buffered for the
	// request path; a deadline means stop was called.
}

// stop ends the watch; the client connection is the caller's again, with
// no read deadline, when it returns.
func (w *clientWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	running := w.running
	w.mu.Unlock()
	w.timer.Stop()
	if running {
		_ = w.cc.c.SetReadDeadline(time.Unix(1, 0))
		<-w.done
		_ = w.cc.c.SetReadDeadline(time.Time{})
	}
}
