package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Policies for transparent connections that match no target.
const (
	UnmatchedReject = "reject" // reset the connection (default)
	UnmatchedDirect = "direct" // connect to the original destination directly
)

// TransparentOptions tune connections steered to the agent without the
// client's knowledge (eBPF redirect or TPROXY-style assignment).
type TransparentOptions struct {
	Unmatched    string        // UnmatchedReject or UnmatchedDirect
	SniffTimeout time.Duration // how long to wait for the client's first bytes (500ms)
}

// ServeTransparent serves one connection whose client believes it is
// talking to orig. It peeks the first bytes: a TLS ClientHello is tunnelled
// through an upstream CONNECT to its SNI (orig when it has none), plain
// HTTP gets the full request path with rotation per request, anything else
// (including protocols where the server speaks first) is tunnelled to orig.
// It returns when the connection is done.
func (s *Server) ServeTransparent(c net.Conn, orig netip.AddrPort) {
	cc := s.track(c)
	if cc == nil {
		return
	}
	defer func() {
		if !cc.handedOff { // else the relay closes it
			cc.c.Close()
			s.untrack(cc)
		}
	}()
	cc.state.Store(stateActive)
	sniff := s.opts.Transparent.SniffTimeout
	if sniff <= 0 {
		sniff = 500 * time.Millisecond
	}
	// Buffers at once: the sniff is short, and a tunnel gives them back.
	cc.attachBufs()
	_ = c.SetReadDeadline(time.Now().Add(sniff))
	first, err := cc.br.Peek(1)
	switch {
	case err != nil && isTimeout(err):
		// The client waits for the server to speak: an opaque tunnel.
		_ = c.SetReadDeadline(time.Time{})
		s.transparentTunnel(cc, orig.String(), orig, "tcp")
	case err != nil:
		return
	case first[0] == 0x16:
		_ = c.SetReadDeadline(time.Now().Add(s.opts.HeaderTimeout))
		key := orig.String()
		if sni, err := peekSNI(cc.br); err == nil && sni != "" {
			key = net.JoinHostPort(sni, strconv.Itoa(int(orig.Port())))
		}
		_ = c.SetReadDeadline(time.Time{})
		s.transparentTunnel(cc, key, orig, "tls")
	default:
		b, _ := cc.br.Peek(min(cc.br.Buffered(), 32))
		if !looksLikeHTTP(b) {
			_ = c.SetReadDeadline(time.Time{})
			s.transparentTunnel(cc, orig.String(), orig, "tcp")
			return
		}
		s.transparentHTTP(cc, orig)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// transparentTunnel tunnels the connection through an IP of the target
// matching key (sni:port or ip:port), retrying other IPs until the
// upstream CONNECT succeeds; no byte is relayed before that. Nothing can
// be said to a client that expects its origin: a refused connection is
// reset, one no target wants follows the unmatched policy.
func (s *Server) transparentTunnel(cc *clientConn, key string, orig netip.AddrPort, kind string) {
	rec := s.record("transparent-"+kind, "", "transparent tunnel", func(ev *RequestEvent) []any {
		return []any{"key", key, "orig", orig.String(), "target", ev.Target, "outcome", ev.Outcome, "retries", ev.Retries,
			"client", cc.c.RemoteAddr().String()}
	})
	host, port, _ := net.SplitHostPort(key) // key is always host:port
	n, _ := strconv.Atoi(port)
	a, rf := s.admit(&entry{kind: entryTransparentTunnel, cc: cc, matchKey: key, host: host, port: n})
	if rf != nil {
		switch {
		case rf.outcome == OutcomeNoMatch:
			if reason := s.unmatched(cc, orig); reason != "" {
				rf.outcome, rf.destination = OutcomeForbidden, reason
			}
		case rf.destination != "":
			s.log.Info("transparent connection refused", "reason", rf.destination, "client", cc.c.RemoteAddr().String(), "target", rf.target)
			resetClose(cc.c)
		default:
			resetClose(cc.c)
		}
		rec.refused(rf, 0)
		return
	}
	rec.admitted(a)
	t := a.target
	if kind == "tls" && s.intercepting(t, host, "transparent") {
		// Its requests take the request path one by one (intercept.go).
		ic := &interception{authority: key, host: strings.ToLower(host), port: n, mode: "transparent", target: t.Name}
		s.intercept(cc, ic, func(outcome string) { rec.finish(outcome, 0) })
		return
	}
	tun, err := s.openTunnel(cc, t, key, t.NumRetries, &rec.ev)
	if errors.Is(err, errClientGone) {
		rec.finish(OutcomeClientClosed, 0)
		return
	}
	if err != nil {
		resetClose(cc.c)
		if tun.poolErr != nil {
			rec.finish(OutcomeNoIP, 0)
		} else {
			rec.finish(OutcomeConnectionError, 0)
		}
		return
	}
	s.holdTunnel(rec, t, &tun)
	s.relayDetached(cc, tun.raw, tun.pre, func(up, down int64) {
		rec.ev.BytesUp, rec.ev.BytesDown = up, down
		rec.finish(OutcomeSuccess, 0)
	})
}

// unmatched applies the policy for connections no target wants. A direct
// connection is made by the agent, from where it stands, so the
// destination policy applies to it as to every other: a refused one is
// reset, and unmatched returns why.
func (s *Server) unmatched(cc *clientConn, orig netip.AddrPort) (refused string) {
	if s.opts.Transparent.Unmatched != UnmatchedDirect {
		resetClose(cc.c)
		return ""
	}
	if reason := s.opts.Destinations.refuse(orig.Addr().Unmap().String(), int(orig.Port())); reason != "" {
		s.reqLog.Log(context.Background(), slog.LevelInfo, "unmatched_direct_refused", "transparent connection refused",
			"reason", reason, "client", cc.c.RemoteAddr().String(), "orig", orig.String(), "unmatched", UnmatchedDirect)
		resetClose(cc.c)
		return reason
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Upstream.Connect)
	defer cancel()
	d := s.dialer()
	oc, err := d.DialContext(ctx, "tcp", orig.String())
	if err != nil {
		s.log.Debug("direct connection failed", "orig", orig.String(), "err", err)
		resetClose(cc.c)
		return ""
	}
	relay(cc.c, cc.detach(), oc, nil, s.opts.TunnelIdleTimeout, &s.bufs)
	return ""
}

// resetClose makes the coming Close send a TCP reset.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// transparentHTTP serves plain HTTP from a transparent client: the first
// request decides whether the connection is ours at all (unmatched ones
// follow the unmatched policy untouched); after that every request is
// matched, rotated and retried on its own, as in explicit-proxy mode.
func (s *Server) transparentHTTP(cc *clientConn, orig netip.AddrPort) {
	_ = cc.c.SetReadDeadline(time.Now().Add(s.opts.HeaderTimeout))
	if head := peekHead(cc.br, s.opts.MaxHeaderBytes); head != nil {
		if u, err := transparentURL(head, orig); err == nil && s.match(u.String()) == nil {
			_ = cc.c.SetReadDeadline(time.Time{})
			outcome := OutcomeNoMatch
			if s.unmatched(cc, orig) != "" {
				outcome = OutcomeForbidden
			}
			// Counted, not logged: the connection was never ours.
			s.record("transparent", "", "", nil).finish(outcome, 0)
			return
		}
	}
	s.requestLoop(cc, func(cc *clientConn, head *RequestHead) bool {
		keep := clientKeepAlive(head)
		if head.Method == http.MethodConnect {
			_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError("CONNECT on a transparent connection"))
			return false
		}
		u, err := transparentURL(head, orig)
		if err != nil {
			_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError(err.Error()))
			return false
		}
		overrides, err := overridesOf(head.Fields)
		if err != nil {
			_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError(err.Error()))
			return false
		}
		req := &request{head: head, url: u, mode: "transparent", retries: retriesOf(head), tag: tagOf(head), overrides: overrides}
		return s.serveRequest(cc, req, keep)
	}, true, false)
}

// peekHead parses the request head at the front of br without consuming
// it; nil when it is incomplete, malformed or larger than br can hold (the
// request loop then answers it as usual).
func peekHead(br *bufio.Reader, max int) *RequestHead {
	for {
		b, _ := br.Peek(br.Buffered())
		if bytes.Contains(b, []byte("\n\r\n")) || bytes.Contains(b, []byte("\n\n")) {
			h, err := ReadRequestHead(bufio.NewReader(bytes.NewReader(b)), max)
			if err != nil {
				return nil
			}
			return h
		}
		if br.Buffered() >= br.Size() {
			return nil
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return nil
		}
	}
}

// transparentURL is where a transparent plain-HTTP request goes: its
// absolute-form target, else http://Host/path, else the original
// destination's address.
func transparentURL(h *RequestHead, orig netip.AddrPort) (*url.URL, error) {
	if hasSchemePrefix(h.Target) {
		u, err := url.ParseRequestURI(h.Target)
		if err != nil || !strings.EqualFold(u.Scheme, "http") {
			return nil, errors.New("invalid absolute request target")
		}
		u.Scheme = "http"
		return u, checkHostPort(u)
	}
	if !strings.HasPrefix(h.Target, "/") {
		return nil, errors.New("unsupported request target form")
	}
	host := h.Fields.Get("Host")
	if host == "" {
		host = orig.String()
	}
	u, err := url.ParseRequestURI("http://" + host + h.Target)
	if err != nil || u.User != nil {
		return nil, errors.New("invalid Host or request target")
	}
	return u, checkHostPort(u)
}
