package proxy

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// Outcomes of a client request, as proxy-hopper names them.
const (
	OutcomeSuccess         = "success"
	OutcomeRateLimited     = "rate_limited"
	OutcomeServerError     = "server_error"
	OutcomeConnectionError = "connection_error"
	OutcomeNoMatch         = "no_match"
	OutcomeNoIP            = "no_ip"
	OutcomeBadRequest      = "bad_request"
	OutcomeAuthFailed      = "auth_failed"
	OutcomeForbidden       = "forbidden"
	// OutcomeClientClosed: the client hung up while its request waited
	// for an IP; nothing was sent upstream and no answer written.
	OutcomeClientClosed = "client_closed"
	// OutcomeQueueFull: refused at once, maxQueueLength requests were
	// waiting for an IP of the target already.
	OutcomeQueueFull = "queue_full"
	// OutcomeClientLimit: the client (its key, JWT subject or, without
	// auth, its address) had as many requests or tunnels in flight as it
	// may.
	OutcomeClientLimit = "client_limit"
	// OutcomeHandshakeFailed: an intercepted connection whose client's
	// TLS handshake with the agent failed (TLSEvent.Reason says why).
	OutcomeHandshakeFailed = "tls_handshake_failed"
)

// AttemptEvent is one use of one upstream IP, passed to Hooks.Attempt when
// the IP is released (for a tunnel: when the tunnel ends).
type AttemptEvent struct {
	Target string
	Addr   string
	// Mode and Tag are those of the request or tunnel the attempt served
	// (RequestEvent.Mode, RequestEvent.Tag).
	Mode     string
	Tag      string
	OK       bool   // not counted against the IP (success, or not its fault)
	Reason   string // failure reason, empty on success
	Status   int    // response status, 0 when there was none
	Duration time.Duration
}

// Tunnel reports an attempt of a CONNECT or transparent tunnel, whose
// Duration (once the tunnel opened) is the tunnel's lifetime.
func (a AttemptEvent) Tunnel() bool { return tunnelMode(a.Mode) }

// AcquireEvent is one wait for an IP of a target, passed to Hooks.Acquire
// when it ends: with the IP (Err nil) or without (pool.ErrNoIP once
// maxQueueWait passed, pool.ErrQueueFull, pool.ErrClosed…). A wait the
// client ended by hanging up is not reported.
type AcquireEvent struct {
	Target string
	Mode   string // of the request or tunnel (RequestEvent.Mode)
	Retry  bool   // a retry's wait, not the request's first
	Wait   time.Duration
	Err    error
}

// Tunnel reports a wait of a CONNECT or transparent tunnel.
func (a AcquireEvent) Tunnel() bool { return tunnelMode(a.Mode) }

func tunnelMode(mode string) bool {
	return mode == "connect" || strings.HasPrefix(mode, "transparent-")
}

// RequestEvent is one finished client request or tunnel.
type RequestEvent struct {
	Target  string // empty when nothing matched
	Mode    string // header, proxy, connect
	Tag     string
	Outcome string
	Status  int
	Retries int
	// RetryNoIP: a retry found no IP it had not tried within
	// maxQueueWait, so the answer is the earlier attempts' (their last
	// response or their failures), not the failure of a last allowed
	// attempt.
	RetryNoIP bool
	Duration  time.Duration
	QueueWait time.Duration
	// AuthReason says why auth refused the request (auth.Reason*), if it did.
	AuthReason string
	// Payload bytes moved for the client, heads excluded: BytesUp from the
	// client towards the origin (request body, tunnel data), BytesDown back
	// to the client (response body, tunnel data).
	BytesUp, BytesDown int64
}

// Hooks observe the data path; they run synchronously and must not block.
type Hooks struct {
	Acquire func(AcquireEvent)
	Attempt func(AttemptEvent)
	Request func(RequestEvent)
	TLS     func(TLSEvent) // CONNECT and transparent TLS connections: intercepted or not (intercept.go)
}

// Then returns hooks that call h's hooks, then next's (either may be nil).
func (h Hooks) Then(next Hooks) Hooks {
	return Hooks{Acquire: then(h.Acquire, next.Acquire), Attempt: then(h.Attempt, next.Attempt), Request: then(h.Request, next.Request),
		TLS: then(h.TLS, next.TLS)}
}

func then[E any](a, b func(E)) func(E) {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(e E) { a(e); b(e) }
}

// recorder is the one place a client request or tunnel ends: every entry
// point makes one when the request arrives and calls finish (or refused)
// exactly once, on whichever goroutine the request ends. finish releases
// what the request held (its per-client count, a tunnel's IP), then passes
// the event to Hooks.Request (metrics) and writes the request's log line.
type recorder struct {
	s     *Server
	start time.Time
	ev    RequestEvent
	// msg is the log line's message ("" writes none); attrs builds its
	// attributes from the finished event, only when the line is written.
	msg   string
	attrs func(ev *RequestEvent) []any
	holds []func() // released by finish, last taken first
}

// record starts the event of a request or tunnel of mode.
func (s *Server) record(mode, tag, msg string, attrs func(ev *RequestEvent) []any) *recorder {
	return &recorder{s: s, start: time.Now(), ev: RequestEvent{Mode: mode, Tag: tag}, msg: msg, attrs: attrs}
}

// hold registers release to run when the request ends (nil: nothing).
func (r *recorder) hold(release func()) {
	if release != nil {
		r.holds = append(r.holds, release)
	}
}

// admitted notes what admission let through.
func (r *recorder) admitted(a *admitted) {
	r.ev.Target = a.target.Name
	r.hold(a.release)
}

// refused ends a request that admission refused, answered with status (0
// when nothing could be answered).
func (r *recorder) refused(rf *refusal, status int) {
	r.ev.Target = rf.target
	if rf.authErr != nil {
		r.ev.AuthReason = auth.Reason(rf.authErr)
	}
	r.finish(rf.outcome, status)
}

// abandon ends a request without an event: the client left while its
// request was read (sending 100 Continue failed), which was never counted.
func (r *recorder) abandon() {
	for i := len(r.holds) - 1; i >= 0; i-- {
		r.holds[i]()
	}
	r.holds = nil
}

// finish ends the request with outcome and the status the client got.
func (r *recorder) finish(outcome string, status int) {
	r.abandon()
	r.ev.Outcome, r.ev.Status, r.ev.Duration = outcome, status, time.Since(r.start)
	if h := r.s.opts.Hooks.Request; h != nil {
		h(r.ev)
	}
	if r.msg != "" {
		r.s.logRequest(&r.ev, r.msg, func() []any { return r.attrs(&r.ev) })
	}
}

// logRequest writes the line of one finished request or tunnel: DEBUG for
// a success and for a transparent connection no target wants (it follows
// the unmatched policy); otherwise INFO, at most Options.RequestLogBurst lines per
// outcome (per reason for refusals by auth) in each RequestLogInterval, the
// rest counted and summarised in one line per interval (internal/logrl),
// so a client flooding refused requests cannot flood the log. The
// metrics count every request whatever is logged. args builds the line's
// attributes; it is only called for lines that are written.
func (s *Server) logRequest(ev *RequestEvent, msg string, args func() []any) {
	ctx := context.Background()
	if ev.Outcome == OutcomeSuccess || (ev.Outcome == OutcomeNoMatch && strings.HasPrefix(ev.Mode, "transparent-")) {
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug(msg, args()...)
		}
		return
	}
	key := ev.Outcome
	if ev.AuthReason != "" {
		key = ev.AuthReason
	}
	if !s.reqLog.Allow(ctx, slog.LevelInfo, key, msg) {
		return
	}
	a := args()
	if ev.AuthReason != "" {
		a = append(a, "reason", ev.AuthReason)
	}
	s.log.Info(msg, a...)
}
