// Package miniproxy is a small but real HTTP/1.1 forward proxy for tests,
// the demo and benchmarks: absolute-form requests are forwarded to their
// origin over pooled keep-alive connections with bodies streamed both ways,
// and CONNECT opens a half-close aware tunnel. A few options inject the
// faults a real upstream proxy shows (rate limiting, slowness, a broken
// egress, credentials), and counters tell what it did.
package miniproxy

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrBadOptions is wrapped by Start when Options cannot work.
var ErrBadOptions = errors.New("invalid miniproxy options")

// Options configures a proxy; the zero value is a healthy proxy on a
// random loopback port.
type Options struct {
	// Addr is where to listen, default "127.0.0.1:0".
	Addr string
	// RateLimitEvery answers every Nth request (absolute-form or CONNECT,
	// after authentication) with 429 and a small JSON body, as if the
	// origin had rate-limited this IP. 0 disables it.
	RateLimitEvery int
	// Delay is slept before each request is forwarded or tunnel dialled.
	Delay time.Duration
	// FailConnect makes the proxy's own egress broken: every request that
	// passes authentication is answered 502 without contacting the origin.
	FailConnect bool
	// RequireAuth is "user:pass": requests without these Basic
	// Proxy-Authorization credentials get 407.
	RequireAuth string
	// Logger receives the HTTP server's own errors; default discarded.
	Logger *slog.Logger
}

// Stats are the proxy's counters since Start.
type Stats struct {
	Requests     int64 // every request answered, whatever the answer
	Forwarded    int64 // absolute-form requests that got an origin response
	Tunnels      int64 // CONNECT tunnels established
	RateLimited  int64 // 429s injected by RateLimitEvery
	AuthRejected int64 // 407s
	Failed       int64 // 502/504: FailConnect, origin unreachable, bad gateway
	BadRequests  int64 // 400s: requests that were not proxy requests
}

// Proxy is a running forward proxy.
type Proxy struct {
	opts Options
	ln   net.Listener
	srv  *http.Server
	tr   *http.Transport
	dial *net.Dialer
	auth string // expected Proxy-Authorization value

	ctx    context.Context // ends on Close
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	tunnels map[net.Conn]struct{}
	wg      sync.WaitGroup

	seq atomic.Int64 // numbers requests for RateLimitEvery

	// counters behind Stats
	requests, forwarded, tunnelsN, rateLimited, authRejected, failed, bad atomic.Int64

	bufs sync.Pool
}

// Start listens on opts.Addr and serves until Close.
func Start(opts Options) (*Proxy, error) {
	if opts.RateLimitEvery < 0 {
		return nil, fmt.Errorf("rateLimitEvery %d: %w", opts.RateLimitEvery, ErrBadOptions)
	}
	if opts.Delay < 0 {
		return nil, fmt.Errorf("delay %s: %w", opts.Delay, ErrBadOptions)
	}
	p := &Proxy{opts: opts, tunnels: map[net.Conn]struct{}{}}
	if opts.RequireAuth != "" {
		if !strings.Contains(opts.RequireAuth, ":") {
			return nil, fmt.Errorf("requireAuth must be user:pass: %w", ErrBadOptions)
		}
		p.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(opts.RequireAuth))
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	p.ln = ln
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.dial = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	p.tr = &http.Transport{
		Proxy:                 nil, // never chain to $HTTP_PROXY
		DialContext:           p.dial.DialContext,
		MaxIdleConns:          0, // no global limit
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass encodings through untouched
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
	}
	p.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "miniproxy").Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return p.ctx },
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// Addr is the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is http://Addr, without credentials, for http.ProxyURL.
func (p *Proxy) URL() *url.URL { return &url.URL{Scheme: "http", Host: p.Addr()} }

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Requests:     p.requests.Load(),
		Forwarded:    p.forwarded.Load(),
		Tunnels:      p.tunnelsN.Load(),
		RateLimited:  p.rateLimited.Load(),
		AuthRejected: p.authRejected.Load(),
		Failed:       p.failed.Load(),
		BadRequests:  p.bad.Load(),
	}
}

// Close stops listening, closes every client, origin and tunnel connection,
// and returns once every handler has finished.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	tunnels := make([]net.Conn, 0, len(p.tunnels))
	for c := range p.tunnels {
		tunnels = append(tunnels, c)
	}
	p.mu.Unlock()
	p.cancel()
	err := p.srv.Close()
	for _, c := range tunnels {
		c.Close()
	}
	p.wg.Wait()
	p.tr.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("close miniproxy %s: %w", p.Addr(), err)
	}
	return nil
}

// enter registers a handler; false once Close has begun.
func (p *Proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

// track registers a hijacked connection for Close; false once closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.tunnels[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.tunnels, c)
	p.mu.Unlock()
}

// ServeHTTP is the proxy: CONNECT or absolute-form, nothing else.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.enter() {
		w.Header().Set("Connection", "close")
		http.Error(w, "miniproxy: closing", http.StatusServiceUnavailable)
		return
	}
	defer p.wg.Done()
	p.requests.Add(1)
	isConnect := r.Method == http.MethodConnect
	if !isConnect && (!r.URL.IsAbs() || r.URL.Host == "") {
		p.bad.Add(1)
		p.plain(w, http.StatusBadRequest, "miniproxy: not a proxy request (want absolute-form or CONNECT)")
		return
	}
	if p.auth != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Proxy-Authorization")), []byte(p.auth)) != 1 {
		p.authRejected.Add(1)
		w.Header().Set("Proxy-Authenticate", `Basic realm="miniproxy"`)
		p.plain(w, http.StatusProxyAuthRequired, "miniproxy: proxy authentication required")
		return
	}
	if p.opts.FailConnect {
		p.failed.Add(1)
		p.plain(w, http.StatusBadGateway, "miniproxy: cannot reach the origin (fail-connect)")
		return
	}
	if n := p.opts.RateLimitEvery; n > 0 && p.seq.Add(1)%int64(n) == 0 {
		p.rateLimited.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"error":"rate_limited","detail":"too many requests from this IP"}`+"\n")
		return
	}
	if d := p.opts.Delay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if isConnect {
		p.connect(w, r)
		return
	}
	p.forward(w, r)
}

// plain writes a short text answer.
func (p *Proxy) plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// hopHeaders are removed in both directions (RFC 9110 §7.6.1, plus the
// proxy ones httputil.ReverseProxy removes).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHop(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				h.Del(tok)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// forward sends an absolute-form request to its origin and streams the
// answer back.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Close = false
	removeHop(out.Header)
	if r.ContentLength == 0 {
		out.Body = nil
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // don't let the transport add Go's
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		if r.Context().Err() != nil {
			return // client gone or proxy closing
		}
		p.failed.Add(1)
		status := http.StatusBadGateway
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			status = http.StatusGatewayTimeout
		}
		p.plain(w, status, "miniproxy: origin unreachable: "+err.Error())
		return
	}
	defer resp.Body.Close()
	p.forwarded.Add(1)
	removeHop(resp.Header)
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	if resp.ContentLength >= 0 && r.Method != http.MethodHead && bodyAllowed(resp.StatusCode) {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	// Bodies of unknown length are flushed as they come, so streams
	// (server-sent events, long polls) are not held back.
	var flush func()
	if resp.ContentLength < 0 {
		rc := http.NewResponseController(w)
		flush = func() { _ = rc.Flush() }
	}
	bufp := p.bufs.Get().(*[]byte)
	defer p.bufs.Put(bufp)
	buf := *bufp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flush != nil {
				flush()
			}
		}
		if err != nil {
			// An origin that breaks mid-body: abort so the client sees a
			// truncated response rather than a complete-looking one.
			if !errors.Is(err, io.EOF) {
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

// bodyAllowed reports whether a response with status may have a body
// (RFC 9110: not 1xx, 204 or 304).
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// connect opens a tunnel to r.Host and relays bytes until both sides are done.
func (p *Proxy) connect(w http.ResponseWriter, r *http.Request) {
	hostport := r.Host
	if _, port, err := net.SplitHostPort(hostport); err != nil || port == "" {
		p.bad.Add(1)
		p.plain(w, http.StatusBadRequest, "miniproxy: CONNECT needs host:port")
		return
	}
	oc, err := p.dial.DialContext(r.Context(), "tcp", hostport)
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		p.failed.Add(1)
		p.plain(w, http.StatusBadGateway, "miniproxy: dial "+hostport+": "+err.Error())
		return
	}
	if !p.track(oc) {
		oc.Close()
		return
	}
	defer func() { p.untrack(oc); oc.Close() }()
	cc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.failed.Add(1)
		p.plain(w, http.StatusInternalServerError, "miniproxy: cannot hijack: "+err.Error())
		return
	}
	if !p.track(cc) {
		cc.Close()
		return
	}
	defer func() { p.untrack(cc); cc.Close() }()
	_ = cc.SetDeadline(time.Time{})
	if _, err := io.WriteString(cc, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	p.tunnelsN.Add(1)
	relay(cc, brw.Reader, oc)
}

type closeWriter interface{ CloseWrite() error }

// relay copies client→origin and origin→client. A direction that ends
// cleanly half-closes its destination and lets the other one go on; an
// error tears both down. It returns when both directions are done. Plain
// io.Copy between TCP connections lets Linux splice(2) the bytes.
func relay(client net.Conn, cbr *bufio.Reader, origin net.Conn) {
	var wg sync.WaitGroup
	var once sync.Once
	kill := func() {
		once.Do(func() {
			client.Close()
			origin.Close()
		})
	}
	pipe := func(dst, src net.Conn, pre []byte) {
		defer wg.Done()
		if len(pre) > 0 {
			if _, err := dst.Write(pre); err != nil {
				kill()
				return
			}
		}
		if _, err := io.Copy(dst, src); err == nil {
			if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
				return
			}
		}
		kill()
	}
	var pre []byte
	if cbr != nil && cbr.Buffered() > 0 {
		b, _ := cbr.Peek(cbr.Buffered()) // what the server read ahead
		pre = append([]byte(nil), b...)
	}
	wg.Add(2)
	go pipe(origin, client, pre)
	go pipe(client, origin, nil)
	wg.Wait()
	kill()
}
