package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
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
)

// AttemptEvent is one use of one upstream IP.
type AttemptEvent struct {
	Target   string
	Addr     string
	OK       bool   // not counted against the IP (success, or not its fault)
	Reason   string // failure reason, empty on success
	Status   int    // response status, 0 when there was none
	Duration time.Duration
}

// RequestEvent is one finished client request or tunnel.
type RequestEvent struct {
	Target    string // empty when nothing matched
	Mode      string // header, proxy, connect
	Tag       string
	Outcome   string
	Status    int
	Retries   int
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
	Attempt func(AttemptEvent)
	Request func(RequestEvent)
}

// Then returns hooks that call h's hooks, then next's (either may be nil).
func (h Hooks) Then(next Hooks) Hooks {
	return Hooks{Attempt: then(h.Attempt, next.Attempt), Request: then(h.Request, next.Request)}
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

// request is a client request after its listener-specific parsing: from
// here on header, explicit and transparent requests share one path.
type request struct {
	head     *RequestHead
	url      *url.URL // where it goes
	matchKey string   // what target regexes see
	mode     string
	tag      string
	retries  int // -1: the target's numRetries
	// principal names who sends the request, for per-principal cookie
	// jars: "" when auth is off or does not apply (transparent).
	principal string
	// overrides are X-Proxy-Hopper-<Name> headers: sent as <Name>, replacing
	// the client's own <Name>.
	overrides Fields
	// fields, when set, are the exact header fields of this attempt (an
	// identity's headers and cookies merged in); nil means the client's
	// fields filtered, plus overrides.
	fields Fields
}

func tlsOrDefault(c *tls.Config) *tls.Config {
	if c != nil {
		return c
	}
	return &tls.Config{MinVersion: tls.VersionTLS12}
}

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

// deadlineReader extends the client connection's read deadline before
// reads of a request body, so a client that stops sending times out.
type deadlineReader struct {
	r     io.Reader
	c     net.Conn
	d     time.Duration
	armed rollingDeadline
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	d.armed.arm(d.c.SetReadDeadline, d.d)
	return d.r.Read(p)
}

// rollingDeadline re-arms a deadline of d from now, but at most every d/8:
// a stall still times out between 7/8·d and d after the last progress, and
// a busy connection skips most timer updates. The deadline it manages must
// not be set elsewhere while it is in use.
type rollingDeadline struct{ at time.Time }

func (r *rollingDeadline) arm(set func(time.Time) error, d time.Duration) {
	if d <= 0 {
		return
	}
	now := time.Now()
	if !r.at.IsZero() && now.Sub(r.at) < d/8 {
		return
	}
	r.at = now
	_ = set(now.Add(d))
}

// reset forgets the last arming, after the deadline was changed elsewhere.
func (r *rollingDeadline) reset() { r.at = time.Time{} }

// sizedBody reads exactly n bytes and fails if the client sends fewer.
type sizedBody struct {
	r io.Reader
	n int64
}

func (s *sizedBody) Read(p []byte) (int, error) {
	if s.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.n {
		p = p[:s.n]
	}
	n, err := s.r.Read(p)
	s.n -= int64(n)
	if errors.Is(err, io.EOF) && s.n > 0 {
		return n, io.ErrUnexpectedEOF
	}
	if s.n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

// eofReader remembers whether its reader reached EOF, and counts bytes.
type eofReader struct {
	r   io.Reader
	eof bool
	n   int64
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += int64(n)
	if errors.Is(err, io.EOF) {
		e.eof = true
	}
	return n, err
}

// serveRequest is the one request path shared by every client mode: frame
// the body, match a target, forward with retries and answer the client. It
// reports whether the client connection can carry another request.
func (s *Server) serveRequest(cc *clientConn, req *request, keep bool) bool {
	start := time.Now()
	head := req.head
	req.matchKey = req.url.String()
	ev := RequestEvent{Mode: req.mode, Tag: req.tag}
	finish := func(outcome string, status int) {
		ev.Outcome, ev.Status, ev.Duration = outcome, status, time.Since(start)
		if s.opts.Hooks.Request != nil {
			s.opts.Hooks.Request(ev)
		}
		s.logRequest(&ev, "request", func() []any {
			return []any{"mode", req.mode, "method", head.Method, "url", redactURL(req.url), "target", ev.Target,
				"tag", req.tag, "status", status, "outcome", outcome, "retries", ev.Retries, "duration", ev.Duration,
				"client", cc.c.RemoteAddr().String()}
		})
	}
	keep = keep && !s.draining.Load()
	framing, size, err := RequestFraming(head.Fields)
	if err != nil {
		he := err.(*HeadError)
		_ = writeJSON(cc.bw, he.Status, head.Minor, false, clientError(he.Reason))
		finish(OutcomeBadRequest, he.Status)
		return false
	}
	if framing == Sized && size > s.opts.MaxBodyBytes {
		_ = writeJSON(cc.bw, 413, head.Minor, false, clientError(errBodyTooLarge.Reason))
		finish(OutcomeBadRequest, 413)
		return false
	}
	var principal *auth.Principal
	if s.opts.Auth.Enabled() && req.mode != "transparent" {
		if principal, err = s.opts.Auth.Authenticate(tokenOf(head, req.mode == "proxy")); err != nil {
			ev.AuthReason = auth.Reason(err)
			s.refuseAuth(cc, head, req.mode == "proxy", err)
			finish(OutcomeAuthFailed, authStatus(err, req.mode == "proxy"))
			return false
		}
		req.principal = principalKey(principal)
	}
	t := s.match(req.matchKey)
	if t != nil && s.opts.Auth.Enabled() {
		var err error
		if principal != nil {
			err = principal.Allows(t.Name)
		} else {
			err = s.opts.Auth.AllowSource(remoteAddr(cc.c), t.Name)
		}
		if err != nil {
			ev.Target, ev.AuthReason = t.Name, auth.Reason(err)
			s.refuseAuth(cc, head, false, err)
			finish(OutcomeForbidden, http.StatusForbidden)
			return false
		}
	}
	if reason := s.opts.Destinations.refuse(req.url.Hostname(), urlPort(req.url, req.url.Scheme)); reason != "" {
		if t != nil {
			ev.Target = t.Name
		}
		s.deniedDestination(cc, head, false, reason)
		finish(OutcomeForbidden, http.StatusForbidden)
		return false
	}
	if t == nil {
		_ = writeJSON(cc.bw, http.StatusBadGateway, head.Minor, keep && framing == NoBody,
			errorBody("no_target", "No target configured for URL: "+redactURL(req.url), req, nil, 0, 0, nil))
		finish(OutcomeNoMatch, http.StatusBadGateway)
		return keep && framing == NoBody
	}
	ev.Target = t.Name
	if req.mode != "transparent" {
		done, ok := s.admit(cc, principal, head, false)
		if !ok {
			finish(OutcomeClientLimit, http.StatusTooManyRequests)
			return false
		}
		defer done()
	}

	var src *eofReader
	var body *requestBody
	if framing == NoBody {
		body = &requestBody{size: 0}
	} else {
		if head.Minor == 1 && hasToken(head.Fields.Values("Expect"), "100-continue") {
			cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := cc.bw.Flush(); err != nil {
				return false
			}
		}
		var r io.Reader
		if framing == Sized {
			r = &sizedBody{r: cc.br, n: size}
		} else {
			r = &limitedBody{r: newChunkedBody(cc.br), max: s.opts.MaxBodyBytes}
		}
		src = &eofReader{r: &deadlineReader{r: r, c: cc.c, d: s.opts.BodyReadTimeout}}
		body, err = prepareBody(src, size, s.opts.RetryBufferBytes)
		if err != nil {
			status, reason := bodyErrorStatus(err)
			_ = writeJSON(cc.bw, status, head.Minor, false, clientError(reason))
			finish(OutcomeBadRequest, status)
			return false
		}
	}
	keep, outcome, status := s.forward(cc, req, t, body, keep, &ev)
	if src != nil {
		ev.BytesUp = src.n
	}
	if src != nil && !src.eof {
		keep = false // unread body bytes: the connection is out of sync
	}
	finish(outcome, status)
	return keep
}

func bodyErrorStatus(err error) (int, string) {
	var he *HeadError
	switch {
	case errors.As(err, &he):
		return he.Status, he.Reason
	case isTimeout(err):
		return http.StatusRequestTimeout, "timed out reading the request body"
	}
	return http.StatusBadRequest, "incomplete request body"
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
	var stop string // why the retries ended early: a local or destination fault
	for i := 0; i <= retries && stop == ""; i++ {
		if i > 0 {
			if !body.Replayable() && body.used {
				break // a streamed body went out once already
			}
			ev.Retries++
		}
		waitStart := time.Now()
		// A client with nothing more to send is watched while it waits.
		ip, err := s.acquire(cc, t, body.Replayable())
		ev.QueueWait += time.Since(waitStart)
		if errors.Is(err, errClientGone) {
			return false, OutcomeClientClosed, 0
		}
		if err != nil {
			if held != nil {
				break
			}
			return s.poolError(cc, req, t, err, keep, body, i, attempts)
		}
		up := t.upstream(ip)
		aStart := time.Now()
		var id *identity.Session
		if t.Identity != nil {
			s.warmup(ctx, t, up, t.Identity.Get(ip).Session(req.principal), req.url)
			id = t.Identity.Get(ip).Session(req.principal) // a 429 to the warm-up rotates it
			req.fields = identityFields(req, id)
		}
		resp, uc, err := t.tr.roundTrip(ctx, up, req, body)
		if err == nil && id != nil {
			id.Learn(req.url, resp.Header)
			t.Identity.OnResponse(ip, resp.StatusCode)
		}
		if err != nil && body.clientErr != nil {
			// The client's body broke (too large, malformed, stalled): not
			// the IP's fault, and not retryable.
			s.release(t, ip, pool.Neutral, AttemptEvent{Reason: "client_body", Duration: time.Since(aStart)})
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
				s.release(t, ip, pool.Neutral, AttemptEvent{Reason: reason, Duration: time.Since(aStart)})
				attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
				keep = keep && (body.Replayable() || !body.used)
				_ = writeJSON(cc.bw, http.StatusBadGateway, req.head.Minor, keep, errorBody(reason,
					"The origin's response head is larger than the agent accepts", req, t, i, retries, attempts))
				return keep, OutcomeConnectionError, http.StatusBadGateway
			}
			stop = s.attemptFailed(t, ip, err, reason, &sus, faults, time.Since(aStart))
			attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
			s.log.Debug("attempt failed", "target", t.Name, "address", ip, "reason", reason, "err", err)
			continue
		}
		if resp.StatusCode == http.StatusProxyAuthRequired && req.url.Scheme == "http" {
			// The upstream proxy rejected our credentials: not an origin answer.
			uc.Close()
			reason := "proxy_status_407"
			s.release(t, ip, pool.Failure, AttemptEvent{Reason: reason, Status: 407, Duration: time.Since(aStart)})
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
			s.release(t, ip, outcome, AttemptEvent{Reason: reason, Status: resp.StatusCode, Duration: time.Since(aStart)})
			attempts = append(attempts, attemptRecord{IP: ip, Reason: reason})
			continue
		}
		bufp := s.bufs.Get().(*[]byte)
		more := func() bool { return uc.br.Buffered() > 0 }
		keep = keep && !s.draining.Load()
		keep2, upErr, clientErr := writeResponse(cc.bw, resp, req.head.Method, req.head.Minor, keep, *bufp, more, &ev.BytesDown)
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
		s.release(t, ip, outcome, a)
		if upErr != nil {
			return false, OutcomeConnectionError, resp.StatusCode
		}
		return keep2, outcomeOf(resp.StatusCode), resp.StatusCode
	}
	if held != nil {
		bufp := s.bufs.Get().(*[]byte)
		keep2, _, _ := writeResponse(cc.bw, held.resp, req.head.Method, req.head.Minor, keep && !s.draining.Load(), *bufp, nil, &ev.BytesDown)
		s.bufs.Put(bufp)
		return keep2, outcomeOf(held.resp.StatusCode), held.resp.StatusCode
	}
	status, code, detail := failedAnswer(stop, "Every attempt failed before an origin response")
	_ = writeJSON(cc.bw, status, req.head.Minor, keep, errorBody(code, detail, req, t, len(attempts)-1, retries, attempts))
	return keep, OutcomeConnectionError, status
}

// attemptFailed releases ip after an attempt that failed before any
// response, as whose fault it was decides (faults.go), and returns why the
// request must stop retrying ("local", "destination"), or "".
func (s *Server) attemptFailed(t *Target, ip string, err error, reason string, sus *suspicion, faults *destFaults, d time.Duration) string {
	a := AttemptEvent{Reason: reason, Duration: d}
	switch {
	case IsLocalError(err):
		a.Reason = ReasonLocal
		s.release(t, ip, pool.Neutral, a)
		return "local"
	case suspectReason(reason):
		s.release(t, ip, pool.Neutral, a)
		if sus.judge(faults, ip, reason, time.Now()) == destination {
			return "destination"
		}
		return ""
	}
	s.release(t, ip, s.failure(), a)
	return ""
}

// blame counts a failure against each of ips, released Neutral earlier
// while their failure could have been the destination's.
func (s *Server) blame(t *Target, ips []string) {
	for _, ip := range ips {
		if err := t.Pool.Blame(context.Background(), ip); err != nil && !errors.Is(err, pool.ErrUnknownIP) {
			s.log.Error("count failure of ip", "target", t.Name, "address", ip, "err", err)
		}
	}
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

// failure is the outcome of a failed attempt: Neutral once the server is
// being forced down (cut requests say nothing about the IP).
func (s *Server) failure() pool.Outcome {
	if s.ctx.Err() != nil {
		return pool.Neutral
	}
	return pool.Failure
}

func (s *Server) release(t *Target, ip string, outcome pool.Outcome, a AttemptEvent) {
	if err := t.Pool.Release(context.Background(), ip, outcome); err != nil {
		s.log.Error("release ip", "target", t.Name, "address", ip, "err", err)
	}
	if s.opts.Hooks.Attempt != nil {
		a.Target, a.Addr, a.OK = t.Name, ip, outcome != pool.Failure
		s.opts.Hooks.Attempt(a)
	}
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

// redactURL drops any userinfo before a URL is logged or echoed.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	if u.User == nil {
		return u.String()
	}
	c := *u
	c.User = nil
	return c.String()
}

// roundTrip sends one request through up and returns the response head.
// A reused connection that turns out to be dead is replaced once, silently:
// that is the connection's fault, not the IP's.
func (t *transport) roundTrip(ctx context.Context, up Upstream, req *request, body *requestBody) (*http.Response, *upConn, error) {
	hp := hostPort(req.url)
	for try := 0; ; try++ {
		// A streamed body cannot be sent twice, so it never risks a kept
		// connection the proxy may have closed meanwhile.
		uc, err := t.connFor(ctx, up, req.url.Scheme, hp, req.url.Hostname(), !body.Replayable())
		if err != nil {
			return nil, nil, err
		}
		stop := context.AfterFunc(ctx, func() { _ = uc.Conn.SetDeadline(time.Unix(1, 0)) })
		uc.writeDL.arm(uc.Conn.SetWriteDeadline, t.timeouts.Response)
		uc.nread = int64(uc.br.Buffered())
		err = writeRequest(uc.bw, req, up, body)
		var resp *http.Response
		if err == nil {
			// Interim and final heads together stay within maxHead.
			uc.limitHead, uc.headLeft = true, t.maxHead-uc.br.Buffered()
			resp, err = readResponse(uc.br, req.head.Method)
			uc.limitHead = false
		}
		if !stop() && err == nil {
			// The context ended meanwhile and its deadline poisoned the
			// connection: it must not be reused.
			err = ctx.Err()
		}
		if err == nil {
			return resp, uc, nil
		}
		uc.Close()
		// A kept connection the proxy closed meanwhile: nothing of a
		// response arrived, so the request can go again on a fresh one.
		if uc.reused && try == 0 && uc.nread == 0 && (body.Replayable() || !body.used) && staleConn(err) {
			continue
		}
		if errors.Is(err, errRespHeadTooLarge) {
			// Plain http: the answer comes from the proxy, which is at
			// fault. https: the origin sent it inside the tunnel.
			reason := "upstream_head_too_large"
			if req.url.Scheme == "https" {
				reason = reasonOriginHeadTooLarge
			}
			return nil, nil, failed(reason, fmt.Errorf("response head exceeds %d bytes or %d fields: %w", t.maxHead, maxRespHeadFields, err))
		}
		return nil, nil, failed(reasonOf("upstream", err), err)
	}
}

// reasonOriginHeadTooLarge is an https origin's response head over the
// limit: the origin's fault, not the IP's, and the same on every IP.
const reasonOriginHeadTooLarge = "origin_head_too_large"

func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || reasonOf("", err) == "_reset"
}

// readResponse reads the next final response head, skipping 1xx interim
// responses (101 is final, and refused later as an upgrade).
func readResponse(br *bufio.Reader, method string) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err == nil {
			err = checkRespFields(resp.Header)
		}
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != 101 {
			continue
		}
		return resp, nil
	}
}

// writeRequest writes the outgoing request: absolute-form to the proxy for
// http origins, origin-form inside the tunnel for https.
func writeRequest(bw *bufio.Writer, req *request, up Upstream, body *requestBody) error {
	h := req.head
	bw.WriteString(h.Method)
	bw.WriteByte(' ')
	if req.url.Scheme == "http" {
		if req.matchKey != "" {
			bw.WriteString(req.matchKey) // req.url.String(), computed once
		} else {
			bw.WriteString(req.url.String())
		}
	} else {
		bw.WriteString(req.url.RequestURI())
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.url.Host)
	bw.WriteString("\r\n")
	if req.fields != nil {
		for _, f := range req.fields {
			writeField(bw, f)
		}
	} else {
		conn := tokens(h.Fields.Values("Connection"))
		for _, f := range h.Fields {
			if isHop(f.Name, conn) || (req.overrides != nil && req.overrides.Has(f.Name)) {
				continue
			}
			writeField(bw, f)
		}
		for _, f := range req.overrides {
			writeField(bw, f)
		}
	}
	if req.url.Scheme == "http" {
		if a := up.authHeader(); a != "" {
			bw.WriteString("Proxy-Authorization: ")
			bw.WriteString(a)
			bw.WriteString("\r\n")
		}
	}
	switch {
	case body.size > 0 || (body.size == 0 && needsLength(h.Method)):
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(body.size, 10))
		bw.WriteString("\r\n\r\n")
		if body.size > 0 {
			if _, err := io.Copy(bw, body.reader()); err != nil {
				return err
			}
		}
	case body.size < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(bw)
		if _, err := io.Copy(cw, body.reader()); err != nil {
			return err
		}
		cw.Close()
		bw.WriteString("\r\n")
	default:
		bw.WriteString("\r\n")
	}
	return bw.Flush()
}

func writeField(bw *bufio.Writer, f Field) {
	bw.WriteString(f.Name)
	bw.WriteString(": ")
	bw.WriteString(f.Value)
	bw.WriteString("\r\n")
}

func needsLength(method string) bool {
	return method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch
}
