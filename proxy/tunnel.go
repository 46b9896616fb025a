package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// serveConnect answers a CONNECT request: it opens a tunnel through one of
// the matched target's IPs, trying the next IP while the upstream connection
// or its CONNECT fails, then relays bytes until both sides are done. Once the
// tunnel is up nothing is retried: its content is opaque.
func (s *Server) serveConnect(cc *clientConn, head *RequestHead) {
	start := time.Now()
	ev := RequestEvent{Mode: "connect", Tag: tagOf(head)}
	finish := func(outcome string, status int) {
		ev.Outcome, ev.Status, ev.Duration = outcome, status, time.Since(start)
		if s.opts.Hooks.Request != nil {
			s.opts.Hooks.Request(ev)
		}
		s.log.Debug("tunnel", "authority", head.Target, "target", ev.Target, "status", status,
			"outcome", outcome, "retries", ev.Retries, "duration", ev.Duration)
	}
	host, port, err := net.SplitHostPort(head.Target)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || host == "" || n < 1 || n > 65535 {
		_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError("CONNECT needs host:port"))
		finish(OutcomeBadRequest, 400)
		return
	}
	hostport := net.JoinHostPort(host, port)
	var principal *auth.Principal
	if s.opts.Auth.Enabled() {
		if principal, err = s.opts.Auth.Authenticate(tokenOf(head, true)); err != nil {
			ev.AuthReason = auth.Reason(err)
			s.refuseAuth(cc, head, true, err)
			finish(OutcomeAuthFailed, http.StatusProxyAuthRequired)
			return
		}
	}
	t := s.match(hostport)
	if t != nil && principal != nil {
		if err := principal.Allows(t.Name); err != nil {
			ev.Target, ev.AuthReason = t.Name, auth.Reason(err)
			s.refuseAuth(cc, head, true, err)
			finish(OutcomeForbidden, http.StatusForbidden)
			return
		}
	}
	if t == nil {
		_ = writeJSON(cc.bw, http.StatusBadGateway, head.Minor, false,
			errorBody("no_target", "No target configured for URL: "+hostport, &request{head: head}, nil, 0, 0, nil))
		finish(OutcomeNoMatch, 502)
		return
	}
	ev.Target = t.Name
	done, ok := s.admit(cc, principal, head, true)
	if !ok {
		finish(OutcomeClientLimit, http.StatusTooManyRequests)
		return
	}
	defer done()
	retries := t.retriesFor(retriesOf(head))
	tun, err := s.openTunnel(cc, t, hostport, retries, &ev)
	if errors.Is(err, errClientGone) {
		finish(OutcomeClientClosed, 0)
		return
	}
	if err != nil {
		if tun.poolErr != nil {
			_, outcome, status := s.poolError(cc, &request{head: head, retries: retries}, t, tun.poolErr, false, &requestBody{}, len(tun.attempts), tun.attempts)
			finish(outcome, status)
			return
		}
		status, code, detail := failedAnswer(tun.stop, "Every attempt to open the tunnel failed")
		_ = writeJSON(cc.bw, status, head.Minor, false, errorBody(code, detail, &request{head: head}, t, len(tun.attempts)-1, retries, tun.attempts))
		finish(OutcomeConnectionError, status)
		return
	}
	cc.bw.WriteString("HTTP/1." + strconv.Itoa(head.Minor) + " 200 Connection established\r\n\r\n")
	if err := cc.bw.Flush(); err == nil {
		_ = cc.c.SetDeadline(time.Time{})
		ev.BytesUp, ev.BytesDown = relay(cc.c, cc.br, tun.raw, tun.br, s.opts.TunnelIdleTimeout)
	}
	tun.raw.Close()
	s.release(t, tun.ip, pool.Success, AttemptEvent{Status: 200, Duration: time.Since(tun.start)})
	finish(OutcomeSuccess, 200)
}

// tunnelResult is an open upstream tunnel, or why none could be opened.
type tunnelResult struct {
	raw      net.Conn
	br       *bufio.Reader
	ip       string
	start    time.Time
	attempts []attemptRecord
	poolErr  error  // no IP could be had
	stop     string // a local or destination fault ended the retries
}

var errTunnelFailed = errors.New("every attempt to open the tunnel failed")

// openTunnel CONNECTs to hostport through t's IPs, moving to the next IP
// while the upstream connection or its CONNECT fails: nothing has been
// relayed yet, so every such failure can be retried. The caller owns the
// IP of a successful result and releases it when the tunnel ends.
func (s *Server) openTunnel(cc *clientConn, t *Target, hostport string, retries int, ev *RequestEvent) (tunnelResult, error) {
	var res tunnelResult
	sus := suspicion{dest: hostport}
	faults := t.destFaults()
	for i := 0; i <= retries && res.stop == ""; i++ {
		if i > 0 {
			ev.Retries++
		}
		ip, err := s.acquire(cc, t, true)
		if err != nil {
			res.poolErr = err
			return res, err
		}
		up := t.upstream(ip)
		aStart := time.Now()
		raw, ubr, err := t.tr.tunnel(s.ctx, up, hostport)
		if err != nil {
			reason := "connect_error"
			var ae *attemptError
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			res.stop = s.attemptFailed(t, ip, err, reason, &sus, faults, time.Since(aStart))
			res.attempts = append(res.attempts, attemptRecord{IP: ip, Reason: reason})
			continue
		}
		s.blame(t, sus.reached(faults, ip))
		res.raw, res.br, res.ip, res.start = raw, ubr, ip, aStart
		return res, nil
	}
	return res, errTunnelFailed
}

// closeWriter is a connection that can half-close.
type closeWriter interface{ CloseWrite() error }

// relay copies both ways between a and b, each side first draining what
// its buffered reader already holds. When one direction ends cleanly the
// other side's write half is closed and the other direction continues;
// an error in either direction tears both down, and so does idle time
// with no byte moving either way (idle <= 0: never). It returns when both
// directions are done. Reads are plain reads, never splice(2). It returns
// the bytes moved from a to b and from b to a.
func relay(a net.Conn, abr *bufio.Reader, b net.Conn, bbr *bufio.Reader, idle time.Duration) (aToB, bToA int64) {
	var wg sync.WaitGroup
	var once sync.Once
	kill := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	var last atomic.Int64 // unix nanos of the last byte moved
	last.Store(time.Now().UnixNano())
	if idle > 0 {
		var watch func()
		var t *time.Timer
		var mu sync.Mutex
		watch = func() {
			quiet := time.Since(time.Unix(0, last.Load()))
			if quiet >= idle {
				kill()
				return
			}
			mu.Lock()
			t.Reset(idle - quiet)
			mu.Unlock()
		}
		mu.Lock()
		t = time.AfterFunc(idle, watch)
		mu.Unlock()
		defer t.Stop()
	}
	pipe := func(dst net.Conn, src io.Reader, moved *int64) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				last.Store(time.Now().UnixNano())
				w, werr := dst.Write(buf[:n])
				*moved += int64(w)
				if werr != nil {
					kill()
					return
				}
			}
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
					return
				}
				kill()
				return
			}
			if err != nil {
				kill()
				return
			}
		}
	}
	wg.Add(2)
	go pipe(b, readerOf(a, abr), &aToB)
	go pipe(a, readerOf(b, bbr), &bToA)
	wg.Wait()
	kill()
	return aToB, bToA
}

// readerOf reads c's bytes, first those already in br.
func readerOf(c net.Conn, br *bufio.Reader) io.Reader {
	if br == nil || br.Buffered() == 0 {
		return c
	}
	pre, _ := br.Peek(br.Buffered())
	return io.MultiReader(bytes.NewReader(bytes.Clone(pre)), c)
}
