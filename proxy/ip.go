package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// acquire takes an IP of t for one attempt of the request or tunnel whose
// event is ev, adding the wait to ev.QueueWait and reporting it to
// Hooks.Acquire. When the client has nothing more to send (watch), a
// hang-up while it waits ends the wait with errClientGone instead of
// taking an IP for nobody (not reported: nobody waits any more).
func (s *Server) acquire(cc *clientConn, t *Target, watch bool, tried []string, ev *RequestEvent) (string, error) {
	start := time.Now()
	ip, err := s.acquireWatched(cc, t, watch, tried)
	wait := time.Since(start)
	ev.QueueWait += wait
	if h := s.opts.Hooks.Acquire; h != nil && !errors.Is(err, errClientGone) {
		h(AcquireEvent{Target: t.Name, Mode: ev.Mode, Retry: len(tried) > 0, Wait: wait, Err: err})
	}
	return ip, err
}

func (s *Server) acquireWatched(cc *clientConn, t *Target, watch bool, tried []string) (string, error) {
	if !watch || cc == nil {
		return t.Pool.AcquireExcept(s.ctx, tried)
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	defer cancel(nil)
	w := watchClient(cc, cancel)
	ip, err := t.Pool.AcquireExcept(ctx, tried)
	w.stop()
	if err != nil && errors.Is(context.Cause(ctx), errClientGone) && s.ctx.Err() == nil {
		return "", errClientGone
	}
	if err == nil && context.Cause(ctx) == errClientGone {
		// The IP came just as the client left: give it back unused.
		if rerr := t.Pool.Release(context.Background(), ip, pool.Neutral); rerr != nil {
			s.log.Error("release ip", "target", t.Name, "address", ip, "err", rerr)
		}
		return "", errClientGone
	}
	return ip, err
}

// attemptFailed releases ip after an attempt that failed before any
// response, as whose fault it was decides (faults.go), and returns why the
// request must stop retrying ("local", "destination"), or "".
func (s *Server) attemptFailed(ev *RequestEvent, t *Target, ip string, err error, reason string, sus *suspicion, faults *destFaults, d time.Duration) string {
	a := AttemptEvent{Reason: reason, Duration: d}
	switch {
	case IsLocalError(err):
		a.Reason = ReasonLocal
		s.release(ev, t, ip, pool.Neutral, a)
		return "local"
	case reason == ReasonOriginCertificate:
		// Not the IP's doing as a rule; another IP is tried all the same
		// (an upstream that intercepts TLS would be).
		s.release(ev, t, ip, pool.Neutral, a)
		return ""
	case suspectReason(reason):
		s.release(ev, t, ip, pool.Neutral, a)
		if sus.judge(faults, ip, reason, time.Now()) == destination {
			return "destination"
		}
		return ""
	}
	s.release(ev, t, ip, s.failure(), a)
	return ""
}

// blame counts a failure against each IP of recs, released Neutral
// earlier while their failure could have been the destination's; a
// quarantine it causes carries the failure's reason.
func (s *Server) blame(t *Target, recs []attemptRecord) {
	for _, rec := range recs {
		ctx := pool.WithCause(context.Background(), rec.Reason)
		if err := t.Pool.Blame(ctx, rec.IP); err != nil && !errors.Is(err, pool.ErrUnknownIP) {
			s.log.Error("count failure of ip", "target", t.Name, "address", rec.IP, "err", err)
		}
	}
}

// failure is the outcome of a failed attempt: Neutral once the server is
// being forced down (cut requests say nothing about the IP).
func (s *Server) failure() pool.Outcome {
	if s.ctx.Err() != nil {
		return pool.Neutral
	}
	return pool.Failure
}

// release gives ip back to t's pool after an attempt of the request or
// tunnel whose event is ev, and reports the attempt to Hooks.Attempt.
func (s *Server) release(ev *RequestEvent, t *Target, ip string, outcome pool.Outcome, a AttemptEvent) {
	ctx := context.Background()
	if outcome == pool.Failure {
		// A failure may quarantine the IP: the hooks learn why.
		ctx = pool.WithCause(ctx, a.Reason)
	}
	if err := t.Pool.Release(ctx, ip, outcome); err != nil {
		s.log.Error("release ip", "target", t.Name, "address", ip, "err", err)
	}
	if s.opts.Hooks.Attempt != nil {
		a.Target, a.Addr, a.OK = t.Name, ip, outcome != pool.Failure
		a.Mode, a.Tag = ev.Mode, ev.Tag
		s.opts.Hooks.Attempt(a)
	}
}

// holdTunnel makes the IP of an open tunnel the request's until it ends:
// rec.finish closes the upstream side and releases the IP as a success
// (the tunnel's content is opaque: nothing in it is the IP's fault).
func (s *Server) holdTunnel(rec *recorder, t *Target, tun *tunnelResult) {
	rec.hold(func() {
		tun.raw.Close()
		s.release(&rec.ev, t, tun.ip, pool.Success, AttemptEvent{Status: 200, Duration: time.Since(tun.start)})
	})
}
