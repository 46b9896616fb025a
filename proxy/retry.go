package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// failureStatus reports statuses that count against the IP and are retried.
func failureStatus(code int) bool {
	switch code {
	case 407, 429, 502, 503, 504:
		return true
	}
	return false
}

func outcomeOf(status int) string {
	switch {
	case status == 429:
		return OutcomeRateLimited
	case status >= 500:
		return OutcomeServerError
	}
	return OutcomeSuccess
}

type attemptRecord struct {
	IP     string `json:"ip"`
	Reason string `json:"reason"`
}

// heldResponse is a failed origin response kept, body and all, in case every
// retry fails too and it is the best answer the client can get.
type heldResponse struct {
	resp *http.Response
}

// forward sends the request through the target's IPs, retrying failures on
// the next IP, and streams the final response to the client. Whose fault a
// failed attempt is decides whether it counts and is retried (faults.go).
func (s *Server) forward(cc *clientConn, req *request, t *Target, body *requestBody, keep bool, ev *RequestEvent) (bool, string, int) {
	retries := t.retriesFor(req.retries)
	ctx := s.ctx
	var attempts []attemptRecord
	var held *heldResponse
	sus := suspicion{dest: hostPort(req.url)}
	faults := t.destFaults()
	var stop string    // why the retries ended early: a local or destination fault
	var tried []string // a retry takes another IP while the target has one (pool.AcquireExcept)
	for i := 0; i <= retries && stop == ""; i++ {
		if i > 0 {
			if !body.Replayable() && body.used {
				break // a streamed body went out once already
			}
			ev.Retries++
		}
		// A client with nothing more to send is watched while it waits.
		ip, err := s.acquire(cc, t, body.Replayable(), tried, ev)
		if errors.Is(err, errClientGone) {
			return false, OutcomeClientClosed, 0
		}
		if err != nil {
			// No IP, or (a retry) no untried IP came free: a held response
			// or the attempts made are the answer.
			if held != nil || (i > 0 && errors.Is(err, pool.ErrNoIP)) {
				ev.RetryNoIP = errors.Is(err, pool.ErrNoIP)
				break
			}
			return s.poolError(cc, req, t, err, keep, body, i, attempts)
		}
		tried = append(tried, ip)
		up := t.upstream(ip)
		aStart := time.Now()
		var id *identity.Session
		if t.Identity != nil {
			s.warmup(ctx, t, up, t.Identity.Get(ip).Session(req.principal), req.url)
			id = t.Identity.Get(ip).Session(req.principal) // a 429 to the warm-up rotates it
			req.fields = identityFields(req, id, t.SpoofUserAgent)
		} else {
			req.userAgent = t.spoofedUserAgent(req)
		}
		resp, uc, err := t.tr.roundTrip(ctx, up, req, body)
		if err == nil && id != nil {
			id.Learn(req.url, resp.Header)
			t.Identity.OnResponse(ip, resp.StatusCode)
		}
		if err != nil && body.clientErr != nil {
			// The client's body broke (too large, malformed, stalled): not
			// the IP's fault, and not retryable.
			s.release(ev, t, ip, pool.Neutral, AttemptEvent{Reason: "client_body", Duration: time.Since(aStart)})
			status, reason := bodyErrorStatus(body.clientErr)
			_ = writeJSON(cc.bw, status, req.head.Minor, false, clientError(reason))
			return false, OutcomeBadRequest, status
		}
		if err != nil {
			reason := "upstream_error"
			var ae *attemptError
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			if reason == reasonOriginHeadTooLarge {
				// Not the IP's fault, and no other IP would fare better.
				s.release(ev, t, ip, pool.Neutral, AttemptEvent{Reason: reason, Duration: time.Since(aStart)})
				attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
				keep = keep && (body.Replayable() || !body.used)
				_ = writeJSON(cc.bw, http.StatusBadGateway, req.head.Minor, keep, errorBody(reason,
					"The origin's response head is larger than the agent accepts", req, t, i, retries, attempts))
				return keep, OutcomeConnectionError, http.StatusBadGateway
			}
			stop = s.attemptFailed(ev, t, ip, err, reason, &sus, faults, time.Since(aStart))
			attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
			s.log.Debug("attempt failed", "target", t.Name, "address", ip, "reason", reason, "err", err)
			continue
		}
		if resp.StatusCode == http.StatusProxyAuthRequired && req.url.Scheme == "http" {
			// The upstream proxy rejected our credentials: not an origin answer.
			uc.Close()
			reason := "proxy_status_407"
			s.release(ev, t, ip, pool.Failure, AttemptEvent{Reason: reason, Status: 407, Duration: time.Since(aStart)})
			attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
			continue
		}
		reason := "status_" + strconv.Itoa(resp.StatusCode)
		outcome := pool.Success
		switch {
		case suspectReason(reason):
			// Maybe the destination's fault: not counted; one other IP tells.
			outcome = pool.Neutral
			if sus.judge(faults, ip, reason, time.Now()) == destination {
				stop = "destination"
			}
		case failureStatus(resp.StatusCode):
			outcome = pool.Failure
		default:
			s.blame(t, sus.reached(faults, ip))
		}
		if outcome != pool.Success && stop == "" && i < retries && (body.Replayable() || !body.used) {
			held = holdResponse(resp, uc, t)
			s.release(ev, t, ip, outcome, AttemptEvent{Reason: reason, Status: resp.StatusCode, Duration: time.Since(aStart)})
			attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
			continue
		}
		bufp := s.bufs.Get().(*[]byte)
		more := func() bool { return uc.br.Buffered() > 0 }
		keep = keep && !s.draining.Load()
		keep2, upErr, clientErr := cc.writeResponse(resp, req.head.Method, req.head.Minor, keep, *bufp, more, &ev.BytesDown)
		s.bufs.Put(bufp)
		a := AttemptEvent{Status: resp.StatusCode, Duration: time.Since(aStart)}
		switch {
		case upErr != nil:
			outcome = s.failure()
			if IsLocalError(upErr) {
				outcome = pool.Neutral
			}
			a.Reason = reasonOf("upstream_body", upErr)
			uc.Close()
		case clientErr != nil || resp.Close:
			uc.Close()
		default:
			t.tr.put(uc)
		}
		if outcome != pool.Success && a.Reason == "" {
			a.Reason = reason
		}
		s.release(ev, t, ip, outcome, a)
		if upErr != nil {
			return false, OutcomeConnectionError, resp.StatusCode
		}
		return keep2, outcomeOf(resp.StatusCode), resp.StatusCode
	}
	if held != nil {
		bufp := s.bufs.Get().(*[]byte)
		keep2, _, _ := cc.writeResponse(held.resp, req.head.Method, req.head.Minor, keep && !s.draining.Load(), *bufp, nil, &ev.BytesDown)
		s.bufs.Put(bufp)
		return keep2, outcomeOf(held.resp.StatusCode), held.resp.StatusCode
	}
	status, code, detail := failedAnswer(stop, "Every attempt failed before an origin response")
	if certificateFailures(attempts) {
		code, detail = ReasonOriginCertificate, "The origin's TLS certificate failed verification through every IP tried; nothing was sent to it. If the origin uses a private CA, name it in the target's caFile"
	}
	_ = writeJSON(cc.bw, status, req.head.Minor, keep, errorBody(code, detail, req, t, len(attempts)-1, retries, attempts))
	return keep, OutcomeConnectionError, status
}

// holdResponse reads a small failed response into memory and frees its
// connection; a large one is dropped (nil).
func holdResponse(resp *http.Response, uc *upConn, t *Target) *heldResponse {
	const limit = 64 << 10
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	resp.Body.Close()
	if err != nil || len(b) > limit || resp.Close {
		uc.Close()
	} else {
		t.tr.put(uc)
	}
	if err != nil || len(b) > limit {
		return nil
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	return &heldResponse{resp: resp}
}

// poolError answers a request that could not get an IP.
func (s *Server) poolError(cc *clientConn, req *request, t *Target, err error, keep bool, body *requestBody, tried int, attempts []attemptRecord) (bool, string, int) {
	keep = keep && (body.Replayable() || !body.used)
	code, msg, outcome := "no_ip_available", "No proxy IP available within the allowed wait time", OutcomeNoIP
	switch {
	case errors.Is(err, pool.ErrQueueFull):
		code, msg, outcome = "queue_full", "Too many requests are waiting for an IP of this target", OutcomeQueueFull
	case errors.Is(err, pool.ErrClosed):
		code, msg, keep = "server_shutdown", "Server is shutting down", false
	case errors.Is(err, pool.ErrBackendUnavailable):
		code, msg = "backend_unavailable", "The pool backend is unavailable"
	case !errors.Is(err, pool.ErrNoIP):
		code, msg = "pool_error", err.Error()
	}
	_ = writeJSON(cc.bw, http.StatusServiceUnavailable, req.head.Minor, keep, errorBody(code, msg, req, t, tried, -1, attempts))
	return keep, outcome, http.StatusServiceUnavailable
}

// errorBody is the JSON error document, with proxy-hopper's keys (error,
// detail, url, method, retries_attempted, retries_allowed) plus the target
// and the IPs tried with why each failed.
func errorBody(code, detail string, req *request, t *Target, tried, allowed int, attempts []attemptRecord) map[string]any {
	m := map[string]any{"error": code, "detail": detail}
	if req != nil && req.head != nil {
		m["method"] = req.head.Method
		if req.url != nil {
			m["url"] = redactURL(req.url)
		} else {
			m["url"] = req.head.Target
		}
	}
	if t != nil {
		m["target"] = t.Name
		if allowed < 0 {
			allowed = t.NumRetries
			if req != nil {
				allowed = t.retriesFor(req.retries)
			}
		}
		m["retries_attempted"] = tried
		m["retries_allowed"] = allowed
		if attempts == nil {
			attempts = []attemptRecord{}
		}
		m["attempts"] = attempts
	}
	return m
}
