package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// serveConnect answers a CONNECT request: it opens a tunnel through one of
// the matched target's IPs, trying the next IP while the upstream connection
// or its CONNECT fails, then relays bytes until both sides are done. Once the
// tunnel is up nothing is retried: its content is opaque.
func (s *Server) serveConnect(cc *clientConn, head *RequestHead) {
	rec := s.record("connect", tagOf(head), "tunnel", func(ev *RequestEvent) []any {
		return []any{"authority", head.Target, "target", ev.Target, "status", ev.Status,
			"outcome", ev.Outcome, "retries", ev.Retries, "duration", ev.Duration, "client", cc.c.RemoteAddr().String()}
	})
	host, port, err := net.SplitHostPort(head.Target)
	n, perr := strconv.Atoi(port)
	if err != nil || perr != nil || host == "" || n < 1 || n > 65535 {
		_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError("CONNECT needs host:port"))
		rec.finish(OutcomeBadRequest, 400)
		return
	}
	hostport := net.JoinHostPort(host, port)
	// The authority is what target regexes see: a host name, IPv4 or
	// bracketed IPv6 literal, nothing that could carry a second host.
	if err := checkHostPort(&url.URL{Host: hostport}); err != nil {
		_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError("CONNECT: "+err.Error()))
		rec.finish(OutcomeBadRequest, 400)
		return
	}

	e := &entry{kind: entryConnect, cc: cc, req: &request{head: head}, matchKey: hostport, host: host, port: n,
		proxyForm: true, shown: hostport}
	a, rf := s.admit(e)
	if rf != nil {
		s.answer(e, rf, false)
		rec.refused(rf, rf.status)
		return
	}
	// The tunnel counts against its client until it ends (rec.finish).
	rec.admitted(a)
	t := a.target
	if s.intercepting(t, host, "connect") {
		// Answered at once: each request inside will take an IP of its own.
		cc.bw.WriteString("HTTP/1." + strconv.Itoa(head.Minor) + " 200 Connection established\r\n\r\n")
		if err := cc.bw.Flush(); err != nil {
			rec.finish(OutcomeClientClosed, 0)
			return
		}
		ic := &interception{authority: hostport, host: strings.ToLower(host), port: n, mode: "connect", principal: a.principal, target: t.Name}
		s.intercept(cc, ic, func(outcome string) { rec.finish(outcome, 200) })
		return
	}

	retries := t.retriesFor(retriesOf(head))
	tun, ok := s.tunnelOrAnswer(cc, &request{head: head, retries: retries}, t, hostport, retries, rec, "Every attempt to open the tunnel failed")
	if !ok {
		return
	}
	cc.bw.WriteString("HTTP/1." + strconv.Itoa(head.Minor) + " 200 Connection established\r\n\r\n")
	s.holdTunnel(rec, t, &tun)
	end := func(up, down int64) {
		rec.ev.BytesUp, rec.ev.BytesDown = up, down
		rec.finish(OutcomeSuccess, 200)
	}
	if err := cc.bw.Flush(); err != nil {
		end(0, 0)
		return
	}
	_ = cc.c.SetDeadline(time.Time{})
	s.relayDetached(cc, tun.raw, tun.pre, end)
}

// tunnelOrAnswer opens a tunnel to hostport for the HTTP client of req
// (a CONNECT, an upgrade) through t's IPs (openTunnel). When none opens it
// answers the client (no IP, or every attempt failed: failDetail) and ends
// rec, and ok is false.
func (s *Server) tunnelOrAnswer(cc *clientConn, req *request, t *Target, hostport string, retries int, rec *recorder, failDetail string) (tun tunnelResult, ok bool) {
	tun, err := s.openTunnel(cc, t, hostport, retries, &rec.ev)
	switch {
	case errors.Is(err, errClientGone):
		rec.finish(OutcomeClientClosed, 0)
	case err != nil && tun.poolErr != nil:
		_, outcome, status := s.poolError(cc, req, t, tun.poolErr, false, &requestBody{}, len(tun.attempts), tun.attempts)
		rec.finish(outcome, status)
	case err != nil:
		status, code, detail := failedAnswer(tun.stop, failDetail)
		_ = writeJSON(cc.bw, status, req.head.Minor, false, errorBody(code, detail, req, t, len(tun.attempts)-1, retries, tun.attempts))
		rec.finish(OutcomeConnectionError, status)
	default:
		return tun, true
	}
	return tun, false
}

// relayDetached relays between cc and b on two goroutines of their own
// and returns at once: the goroutine serving cc ends, and with it its
// stack, grown by the request it handled, so an idle tunnel costs two
// small goroutines and no buffer. When both directions are done, end runs
// with the bytes moved (client to b, b to client), then cc is closed and
// untracked. cc's serving goroutine must not touch cc afterwards.
func (s *Server) relayDetached(cc *clientConn, b net.Conn, bPre []byte, end func(up, down int64)) {
	cc.handedOff = true
	startRelay(cc.c, cc.detach(), b, bPre, s.opts.TunnelIdleTimeout, &s.bufs, func(up, down int64) {
		end(up, down)
		cc.c.Close()
		s.untrack(cc)
	})
}

// tunnelResult is an open upstream tunnel, or why none could be opened.
type tunnelResult struct {
	raw      net.Conn
	pre      []byte // bytes the upstream sent after its CONNECT reply
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
	var tried []string // a retry takes another IP while the target has one (pool.AcquireExcept)
	for i := 0; i <= retries && res.stop == ""; i++ {
		if i > 0 {
			ev.Retries++
		}
		ip, err := s.acquire(cc, t, true, tried, ev)
		if err != nil && i > 0 && errors.Is(err, pool.ErrNoIP) {
			ev.RetryNoIP = true
			break // no untried IP came free: the attempts made are the answer
		}
		if err != nil {
			res.poolErr = err
			return res, err
		}
		tried = append(tried, ip)
		up := t.upstream(ip)
		aStart := time.Now()
		raw, pre, err := t.tr.tunnel(s.ctx, up, hostport)
		if err != nil {
			reason := "connect_error"
			var ae *attemptError
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			res.stop = s.attemptFailed(ev, t, ip, err, reason, &sus, faults, time.Since(aStart))
			res.attempts = append(res.attempts, attemptRecord{IP: ip, Reason: reason})
			continue
		}
		s.blame(t, sus.reached(faults, ip))
		res.raw, res.pre, res.ip, res.start = raw, pre, ip, aStart
		return res, nil
	}
	return res, errTunnelFailed
}

// closeWriter is a connection that can half-close.
type closeWriter interface{ CloseWrite() error }

// relay is startRelay, waiting for the end: it returns the bytes moved
// from a to b and from b to a.
func relay(a net.Conn, aPre []byte, b net.Conn, bPre []byte, idle time.Duration, bufs *sync.Pool) (aToB, bToA int64) {
	done := make(chan struct{})
	startRelay(a, aPre, b, bPre, idle, bufs, func(x, y int64) {
		aToB, bToA = x, y
		close(done)
	})
	<-done
	return aToB, bToA
}

// startRelay copies both ways between a and b on two new goroutines,
// first sending aPre (bytes of a's already read) to b and bPre to a. When
// one direction ends cleanly the other side's write half is closed and
// the other direction continues; an error in either direction tears both
// down, and so does idle time with no byte moving either way (idle <= 0:
// never). When both directions are done, both connections are closed and
// end runs with the bytes moved from a to b and from b to a. Reads are
// plain reads, never splice(2), and no buffer is held while a direction
// waits for data: a copy buffer comes from bufs only when bytes are there
// to read (see readPooled).
func startRelay(a net.Conn, aPre []byte, b net.Conn, bPre []byte, idle time.Duration, bufs *sync.Pool, end func(aToB, bToA int64)) {
	var once sync.Once
	kill := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	var last atomic.Int64 // unix nanos of the last byte moved
	last.Store(time.Now().UnixNano())
	var t *time.Timer
	if idle > 0 {
		var watch func()
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
	}
	var aToB, bToA int64
	var running atomic.Int32
	running.Store(2)
	finished := func() {
		if running.Add(-1) != 0 {
			return
		}
		if t != nil {
			t.Stop()
		}
		kill()
		end(aToB, bToA)
	}
	pipe := func(dst, src net.Conn, pre []byte, moved *int64) {
		if len(pre) > 0 {
			w, err := dst.Write(pre)
			*moved += int64(w)
			if err != nil {
				kill()
				return
			}
		}
		read := readPooled(src, bufs)
		for {
			_, err := read(func(p []byte) error {
				last.Store(time.Now().UnixNano())
				w, werr := dst.Write(p)
				*moved += int64(w)
				return werr
			})
			if errors.Is(err, errWriteFailed) {
				kill()
				return
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
	go func() {
		pipe(b, a, aPre, &aToB)
		finished()
	}()
	go func() {
		pipe(a, b, bPre, &bToA)
		finished()
	}()
}

// errWriteFailed wraps the write error of a readPooled callback.
var errWriteFailed = errors.New("relay write failed")

// readPooled returns a function that waits for bytes on c, reads them
// into a buffer taken from bufs for the time of the read and hands them
// to use, then gives the buffer back. It returns the bytes read, io.EOF
// at the end of the stream, and use's error wrapped in errWriteFailed.
// On sockets it waits without a buffer (readRaw); on other connections
// it holds one while it reads.
func readPooled(c net.Conn, bufs *sync.Pool) func(use func([]byte) error) (int, error) {
	if r := rawReader(c, bufs); r != nil {
		return r
	}
	return func(use func([]byte) error) (int, error) {
		bp := bufs.Get().(*[]byte)
		defer bufs.Put(bp)
		n, err := c.Read(*bp)
		if n > 0 {
			if werr := use((*bp)[:n]); werr != nil {
				return n, errors.Join(errWriteFailed, werr)
			}
		}
		return n, err
	}
}
