package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/mitm"
)

// TLS interception: a CONNECT (explicit mode) or a transparent TLS flow
// whose target sets Intercept, and whose host is not bypassed, is not
// tunnelled. The agent answers the client's TLS with a leaf the
// interception CA signs for the name the client asked for, and each
// request inside then takes the one request path (serveRequest) as an
// https request: its own IP as the pool decides, retries, identities,
// auth and metrics, exactly as plain HTTP.

// InterceptOptions turn interception on (Minter set).
type InterceptOptions struct {
	// Minter signs the leaves shown to clients; nil: nothing is
	// intercepted, every CONNECT and TLS flow is tunnelled.
	Minter *mitm.Minter
	// Bypass reports hosts never intercepted (clients that pin
	// certificates): they are tunnelled. Nil bypasses none.
	Bypass func(host string) bool
	// HTTP2 serves clients that offer h2 over HTTP/2; off, only
	// http/1.1 is offered.
	HTTP2 bool
}

// How a TLS connection was handled (TLSEvent.Handling).
const (
	TLSIntercepted = "intercepted" // terminated; its requests served one by one
	TLSTunnelled   = "tunnelled"   // its target does not intercept: a tunnel
	TLSBypassed    = "bypassed"    // its target intercepts, its host is on the bypass list
	TLSFailed      = "failed"      // interception began, the handshake failed (Reason says why)
)

// Handshake failure reasons (TLSEvent.Reason), a closed set.
const (
	HandshakeClientRejected = "client_rejected_certificate" // the client's TLS alert: it does not trust the leaf
	HandshakeSNIMismatch    = "sni_mismatch"                // explicit mode: SNI names another host than the CONNECT
	HandshakeBadSNI         = "bad_sni"                     // a server name no certificate can carry
	HandshakeNotTLS         = "not_tls"                     // the client did not send a TLS ClientHello
	HandshakeTimeout        = "timeout"                     // no complete handshake within headerTimeout
	HandshakeClientClosed   = "client_closed"               // the client hung up during the handshake
	HandshakeMintError      = "mint_error"                  // the leaf could not be signed
	HandshakeError          = "handshake_error"             // anything else (versions, ciphers...)
)

// TLSEvent is one CONNECT or transparent TLS connection's handling,
// passed to Hooks.TLS when it is decided (for TLSFailed: when the
// handshake failed).
type TLSEvent struct {
	Target   string
	Mode     string // "connect" or "transparent"
	Handling string // TLSIntercepted, TLSTunnelled, TLSBypassed, TLSFailed
	Reason   string // the Handshake* reason when Handling is TLSFailed
	Proto    string // h2 or http/1.1, once intercepted
}

// intercepting reports whether a TLS connection to host matched to t is
// intercepted, and emits its TLSEvent unless it is (then the handshake's
// end emits it).
func (s *Server) intercepting(t *Target, host, mode string) bool {
	handling := TLSTunnelled
	switch {
	case !t.Intercept || s.opts.Intercept.Minter == nil:
	case s.opts.Intercept.Bypass != nil && s.opts.Intercept.Bypass(host):
		handling = TLSBypassed
	default:
		return true
	}
	s.tlsEvent(TLSEvent{Target: t.Name, Mode: mode, Handling: handling})
	return false
}

func (s *Server) tlsEvent(ev TLSEvent) {
	if h := s.opts.Hooks.TLS; h != nil {
		h(ev)
	}
}

// interception is what an intercepted connection's requests carry from
// the connection: where they go and who sends them.
type interception struct {
	authority string // host:port the client connected to (CONNECT authority, or SNI or original address and port)
	host      string // its host, lower case, no brackets
	port      int
	mode      string          // "connect" or "transparent"
	principal *auth.Principal // the CONNECT's; nil for transparent clients or without auth
	target    string          // the target that matched the connection
}

// interceptConn is the client connection a TLS server reads: the bytes
// the client sent after its CONNECT head first, then the socket. The TLS
// config's GetCertificate finds the connection's interception through it.
type interceptConn struct {
	net.Conn
	pre []byte
	ic  *interception
	// records follows what the client sends during the handshake (nil
	// after it, and on the agent's own client connections).
	records *recordTail
}

func (c *interceptConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if len(c.pre) > 0 {
		n = copy(p, c.pre)
		c.pre = c.pre[n:]
	} else {
		n, err = c.Conn.Read(p)
	}
	if c.records != nil {
		c.records.feed(p[:n])
	}
	return n, err
}

// recordTail follows the TLS record layer of the bytes a client sends,
// keeping the type, length and first two body bytes of the latest
// complete record. A TLS 1.3 client that rejects the leaf before it has
// switched to its handshake keys (OpenSSL's: curl, Python, ...) sends its
// alert in plaintext, which crypto/tls, expecting an encrypted record,
// reports as "bad record MAC" and not as the remote error the encrypted
// alert of a Go client gives.
type recordTail struct {
	hdr      [5]byte
	nhdr     int // header bytes of the current record held
	left     int // body bytes of the current record still to come
	body     [2]byte
	nbody    int
	lastType byte
	lastLen  int
	lastBody [2]byte
}

func (r *recordTail) feed(b []byte) {
	for len(b) > 0 {
		if r.nhdr < len(r.hdr) {
			k := copy(r.hdr[r.nhdr:], b)
			r.nhdr += k
			b = b[k:]
			if r.nhdr == len(r.hdr) {
				r.left, r.nbody = int(binary.BigEndian.Uint16(r.hdr[3:5])), 0
				if r.left == 0 {
					r.complete()
				}
			}
			continue
		}
		k := min(len(b), r.left)
		r.nbody += copy(r.body[r.nbody:], b[:k])
		r.left -= k
		b = b[k:]
		if r.left == 0 {
			r.complete()
		}
	}
}

func (r *recordTail) complete() {
	r.lastType, r.lastLen, r.lastBody = r.hdr[0], int(binary.BigEndian.Uint16(r.hdr[3:5])), r.body
	r.nhdr = 0
}

// rejectedCertificate reports whether the client's latest record is a
// plaintext alert saying it does not accept the certificate
// (bad_certificate, unsupported_certificate, certificate_revoked,
// certificate_expired, certificate_unknown, unknown_ca). An encrypted
// alert is never 2 bytes long.
func (r *recordTail) rejectedCertificate() bool {
	const recordTypeAlert = 21
	if r.lastType != recordTypeAlert || r.lastLen != 2 {
		return false
	}
	d := r.lastBody[1]
	return (d >= 42 && d <= 46) || d == 48
}

// CloseWrite half-closes the socket (lingerClose, relays).
func (c *interceptConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

// interceptTLS is the server TLS config of intercepted connections: the
// leaf for the SNI, and the connection's host when the client sends none
// (an explicit CONNECT to an IP, or a transparent flow). In explicit mode
// the SNI must name the CONNECT's host: a leaf is minted only for the
// destination the client was admitted to, so random SNIs cannot make the
// agent sign (and cache) names no target matched.
func (s *Server) interceptTLS() *tls.Config {
	s.icptOnce.Do(func() {
		m := s.opts.Intercept.Minter
		base := mitm.ServerConfig(m)
		if !s.opts.Intercept.HTTP2 {
			base.NextProtos = []string{"http/1.1"}
		}
		base.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			ic := hello.Conn.(*interceptConn).ic
			if hello.ServerName == "" {
				if ip, err := netip.ParseAddr(ic.host); err == nil {
					return m.ForIP(ip)
				}
				return m.ForName(ic.host)
			}
			name, ip, err := mitm.ValidName(hello.ServerName)
			if err != nil {
				return nil, &handshakeErr{HandshakeBadSNI, err}
			}
			if ip.IsValid() {
				if ic.mode == "connect" && ip.String() != ic.host {
					return nil, &handshakeErr{HandshakeSNIMismatch, errors.New("SNI names another host than the CONNECT")}
				}
				return m.ForIP(ip)
			}
			if ic.mode == "connect" && name != ic.host {
				return nil, &handshakeErr{HandshakeSNIMismatch, errors.New("SNI names another host than the CONNECT")}
			}
			c, err := m.ForName(name)
			if err != nil {
				return nil, &handshakeErr{HandshakeMintError, err}
			}
			return c, nil
		}
		s.icptConf = base
	})
	return s.icptConf
}

// handshakeErr is a handshake failure whose reason GetCertificate knows.
type handshakeErr struct {
	reason string
	err    error
}

func (e *handshakeErr) Error() string { return e.reason + ": " + e.err.Error() }
func (e *handshakeErr) Unwrap() error { return e.err }

// handshakeReason classifies a failed server handshake (a plaintext
// certificate alert, as OpenSSL clients send, is found by recordTail).
func handshakeReason(err error) string {
	var he *handshakeErr
	var oe *net.OpError
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &he):
		return he.reason
	case errors.As(err, &oe) && oe.Op == "remote error":
		return HandshakeClientRejected
	case errors.As(err, &rh):
		return HandshakeNotTLS
	case errors.Is(err, net.ErrClosed):
		return HandshakeClientClosed
	}
	switch reasonOf("client", err) { // the network error classes of upstream attempts
	case "client_timeout":
		return HandshakeTimeout
	case "client_reset", "client_closed":
		return HandshakeClientClosed
	}
	return HandshakeError
}

// intercept serves cc, whose client expects TLS from ic.authority next,
// as an intercepted connection: the handshake, then its requests, on a
// goroutine of its own. cc's serving goroutine must leave cc alone after
// this (cc.handedOff); the intercepted connection takes over cc's place
// among the server's connections. done runs when the connection ends,
// with OutcomeSuccess, or OutcomeHandshakeFailed when the client's TLS
// handshake failed.
func (s *Server) intercept(cc *clientConn, ic *interception, done func(outcome string)) {
	pre := cc.detach()
	cc.handedOff = true
	go s.serveIntercepted(cc, &interceptConn{Conn: cc.c, pre: pre, ic: ic, records: &recordTail{}}, done)
}

func (s *Server) serveIntercepted(old *clientConn, conn *interceptConn, done func(outcome string)) {
	ic := conn.ic
	tc := tls.Server(conn, s.interceptTLS())
	outcome := OutcomeSuccess
	nc := &clientConn{c: tc, bufs: s.cbufs, key: old.key, icpt: ic, done: func() { done(outcome) }}
	nc.state.Store(stateActive)
	s.mu.Lock()
	delete(s.conns, old)
	s.conns[nc] = struct{}{}
	s.mu.Unlock()

	_ = conn.SetDeadline(time.Now().Add(s.opts.HeaderTimeout))
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.HeaderTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		reason := handshakeReason(err)
		if reason == HandshakeError && conn.records.rejectedCertificate() {
			reason = HandshakeClientRejected
		}
		s.tlsEvent(TLSEvent{Target: ic.target, Mode: ic.mode, Handling: TLSFailed, Reason: reason})
		s.reqLog.Log(context.Background(), slog.LevelInfo, "intercepted handshake failed:"+reason, "intercepted TLS handshake failed",
			"reason", reason, "authority", ic.authority, "client", old.c.RemoteAddr().String(), "err", boundedErr(err))
		outcome = OutcomeHandshakeFailed
		conn.Conn.Close()
		s.untrack(nc)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	conn.records = nil
	proto := tc.ConnectionState().NegotiatedProtocol
	if proto == "" {
		proto = "http/1.1"
	}
	s.tlsEvent(TLSEvent{Target: ic.target, Mode: ic.mode, Handling: TLSIntercepted, Proto: proto})
	if proto == "h2" {
		s.serveH2(nc)
		nc.c.Close()
		s.untrack(nc)
		return
	}
	s.serveFrom(nc, s.handleIntercepted, true)
}

// boundedErr is an error for a log line, at most 200 bytes.
func boundedErr(err error) string {
	m := err.Error()
	if len(m) > 200 {
		m = m[:200] + "…"
	}
	return m
}

// handleIntercepted serves one request read from an intercepted
// connection: an https request to the connection's authority.
func (s *Server) handleIntercepted(cc *clientConn, head *RequestHead) bool {
	keep := clientKeepAlive(head)
	ic := cc.icpt
	if head.Method == http.MethodConnect {
		_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError("CONNECT inside an intercepted connection"))
		return false
	}
	u, status, err := interceptedURL(head, ic)
	if err != nil {
		_ = writeJSON(cc.bw, status, head.Minor, false, clientError(err.Error()))
		return false
	}
	overrides, err := overridesOf(head.Fields)
	if err != nil {
		_ = writeJSON(cc.bw, http.StatusBadRequest, head.Minor, false, clientError(err.Error()))
		return false
	}
	if isUpgrade(head) {
		return s.serveUpgrade(cc, &request{head: head, url: u, mode: "intercept", retries: retriesOf(head), tag: tagOf(head), overrides: overrides})
	}
	req := &request{head: head, url: u, mode: "intercept", retries: retriesOf(head), tag: tagOf(head), overrides: overrides}
	return s.serveRequest(cc, req, keep)
}

// interceptedURL is where a request of an intercepted connection goes:
// https://authority/path. The request may only name the connection's
// host (Host, or an absolute-form target): the client's TLS session and
// the certificate it accepted are for that host, so another host is
// answered 421 Misdirected Request, not sent elsewhere. The default port
// 443 is left out, as clients write https URLs.
func interceptedURL(h *RequestHead, ic *interception) (*url.URL, int, error) {
	path := h.Target
	host := h.Fields.Get("Host")
	if hasSchemePrefix(h.Target) {
		u, err := url.ParseRequestURI(h.Target)
		if err != nil || !strings.EqualFold(u.Scheme, "https") || u.User != nil {
			return nil, http.StatusBadRequest, errors.New("invalid absolute request target in an intercepted connection")
		}
		host, path = u.Host, u.RequestURI()
	} else if !strings.HasPrefix(path, "/") {
		return nil, http.StatusBadRequest, errors.New("unsupported request target form")
	}
	if host != "" && !sameAuthority(host, ic) {
		return nil, http.StatusMisdirectedRequest, errors.New("this connection is for " + ic.authority + " only")
	}
	auth := ic.authority
	if ic.port == 443 {
		auth = hostLiteral(ic.host)
	}
	u, err := url.ParseRequestURI("https://" + auth + path)
	if err != nil {
		return nil, http.StatusBadRequest, errors.New("invalid request target")
	}
	if err := checkHostPort(u); err != nil {
		return nil, http.StatusBadRequest, err
	}
	return u, 0, nil
}

// sameAuthority reports whether a Host value names ic's host and port
// (no port: 443).
func sameAuthority(hostport string, ic *interception) bool {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		h, p = strings.Trim(hostport, "[]"), "443"
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	return h == ic.host && p == strconv.Itoa(ic.port)
}

// hostLiteral brackets an IPv6 host for a URL.
func hostLiteral(h string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}

// isUpgrade reports a request asking to switch protocols (WebSocket).
func isUpgrade(h *RequestHead) bool {
	return h.Fields.Has("Upgrade") && hasToken(h.Fields.Values("Connection"), "upgrade")
}

// serveUpgrade serves a request of an intercepted connection that asks
// to switch protocols (WebSocket): admitted as any request, then sent
// through one IP (retried while the tunnel cannot be opened) over TLS to
// the origin, verified as every https origin is; from then on the two
// connections are relayed, on that IP, for the connection's lifetime.
// Nothing is retried once the request is sent.
func (s *Server) serveUpgrade(cc *clientConn, req *request) bool {
	head := req.head
	rec := s.record(req.mode, req.tag, "upgrade", func(ev *RequestEvent) []any {
		return []any{"mode", req.mode, "url", redactURL(req.url), "target", ev.Target, "status", ev.Status,
			"outcome", ev.Outcome, "retries", ev.Retries, "duration", ev.Duration, "client", cc.c.RemoteAddr().String()}
	})
	req.matchKey = req.url.String()
	e := requestEntry(cc, req)
	a, rf := s.admit(e)
	if rf != nil {
		s.answer(e, rf, false)
		rec.refused(rf, rf.status)
		return false
	}
	rec.admitted(a)
	t := a.target
	retries := t.retriesFor(req.retries)
	hostport := net.JoinHostPort(req.url.Hostname(), strconv.Itoa(e.port))
	tun, ok := s.tunnelOrAnswer(cc, req, t, hostport, retries, rec, "Every attempt to reach the origin failed")
	if !ok {
		return false
	}
	s.holdTunnel(rec, t, &tun)
	oc, err := t.tr.originTLS(s.ctx, &interceptConn{Conn: tun.raw, pre: tun.pre}, hostport, req.url.Hostname())
	if err != nil {
		// The origin's certificate failed verification (or its TLS did):
		// the client gets an answer, never an unverified connection.
		code := "origin_tls"
		var ae *attemptError
		if errors.As(err, &ae) && ae.Reason == ReasonOriginCertificate {
			code = ReasonOriginCertificate
		}
		_ = writeJSON(cc.bw, http.StatusBadGateway, head.Minor, false, map[string]any{"error": code,
			"detail": "TLS with the origin failed: " + boundedErr(err)})
		rec.finish(OutcomeConnectionError, http.StatusBadGateway)
		return false
	}
	bw := bufio.NewWriterSize(oc, 4<<10)
	bw.WriteString(head.Method + " " + req.url.RequestURI() + " HTTP/1.1\r\n")
	for _, f := range head.Fields {
		if isProxyOnly(f.Name) || (req.overrides != nil && req.overrides.Has(f.Name)) {
			continue
		}
		writeField(bw, f)
	}
	for _, f := range req.overrides {
		writeField(bw, f)
	}
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		_ = writeJSON(cc.bw, http.StatusBadGateway, head.Minor, false, map[string]any{"error": "connection_error",
			"detail": "sending the upgrade request failed"})
		rec.finish(OutcomeConnectionError, http.StatusBadGateway)
		return false
	}
	_ = cc.c.SetDeadline(time.Time{})
	s.relayDetached(cc, oc, nil, func(up, down int64) {
		rec.ev.BytesUp, rec.ev.BytesDown = up, down
		rec.finish(OutcomeSuccess, http.StatusSwitchingProtocols)
	})
	return false
}

// isProxyOnly names the fields meant for the agent, never the origin.
func isProxyOnly(name string) bool {
	return strings.EqualFold(name, "Proxy-Authorization") || strings.EqualFold(name, "Proxy-Connection") ||
		len(name) >= len("X-Proxy-Hopper-") && strings.EqualFold(name[:len("X-Proxy-Hopper-")], "X-Proxy-Hopper-")
}
