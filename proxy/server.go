// Package proxy is the agent's data path: it accepts client connections,
// parses requests, matches them to targets and forwards them through the
// targets' upstream proxy IPs. Every request, whichever way it came, takes
// the same steps, one file each:
//
//   - accept (server.go: Serve, track, requestLoop; transparent.go:
//     ServeTransparent): a client connection, its request heads;
//   - route by form (request.go: handle; tunnel.go: serveConnect;
//     transparent.go: transparentHTTP, transparentTunnel);
//   - admit (admission.go: admit): auth, target match, target ACL,
//     destination policy, per-client limits, before any IP is acquired;
//   - acquire, forward, retry (ip.go: acquire, release, attemptFailed;
//     retry.go: forward for HTTP, tunnel.go: openTunnel for tunnels), over
//     the upstream transport (upstream.go) with bodies (body.go) and HTTP
//     reading and writing (http.go, head.go);
//   - release and record (events.go: recorder.finish): what the request
//     held is given back, then metrics hooks and the request log line.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/internal/logrl"
)

// Header names of the client protocol.
const (
	HeaderTarget  = "X-Proxy-Hopper-Target"
	HeaderRetries = "X-Proxy-Hopper-Retries"
	HeaderTag     = "X-Proxy-Hopper-Tag"
	// HeaderUserAgent overrides the User-Agent sent upstream (one of the
	// X-Proxy-Hopper-<Name> overrides, bounded by MaxUserAgentLen).
	HeaderUserAgent = "X-Proxy-Hopper-User-Agent"
)

// Options tunes the server; zero fields take the defaults shown.
type Options struct {
	Logger           *slog.Logger
	MaxHeaderBytes   int           // 64 KiB; larger heads get 431
	MaxBodyBytes     int64         // 1 GiB; larger bodies get 413
	RetryBufferBytes int64         // 1 MiB; bodies up to this size are replayed on retry
	HeaderTimeout    time.Duration // 10s to send a whole request head
	IdleTimeout      time.Duration // 120s between requests on a keep-alive connection
	BodyReadTimeout  time.Duration // 30s between reads of a request body
	// TunnelIdleTimeout closes a tunnel (CONNECT or transparent) after this
	// long with no byte moving either way, freeing its IP (10m).
	TunnelIdleTimeout time.Duration
	Upstream          Timeouts // connect 10s, response 60s, idle conns 90s
	Hooks             Hooks
	Transparent       TransparentOptions
	// Auth checks clients before any IP is acquired; nil or disabled lets
	// everyone through.
	Auth *auth.Authenticator
	// Destinations refuses destinations in every mode before any IP is
	// acquired (403, or a reset for transparent tunnels); nil refuses none.
	Destinations *DestinationPolicy
	// MaxConns bounds the client connections open at once, over every
	// listener and the transparent path; one more is reset at accept
	// (0: no limit). MaxConnsPerClient bounds those from one client
	// address (IPv4 address, IPv6 /64; 0: no limit).
	MaxConns          int
	MaxConnsPerClient int
	// RefusedConn is called for each connection refused at a limit, with
	// the reason (RefusedGlobalLimit, RefusedClientLimit). It must not
	// block.
	RefusedConn func(reason string)
	// MaxClientRequests and MaxClientTunnels cap the requests and the
	// CONNECT tunnels one client has in flight at once (512 and 256); a
	// client is its API key or JWT subject, or without auth its source
	// address. One more gets 429 at once. Negative: no cap. Transparent
	// traffic is not capped.
	MaxClientRequests int
	MaxClientTunnels  int
	// Dialer makes every outgoing connection (upstream proxies, direct
	// transparent connections); nil means a plain net.Dialer. The eBPF
	// data plane uses its Control hook to keep the agent's own sockets out
	// of the redirect.
	Dialer *net.Dialer
	// RequestLogBurst and RequestLogInterval bound the INFO lines of failed
	// and refused requests: at most RequestLogBurst per outcome (refusal
	// reason) in each RequestLogInterval; the rest are counted and
	// summarised in one line (10 per minute). Failed accepts (EMFILE...),
	// retried with a backoff, are bounded the same way under one key.
	RequestLogBurst    int
	RequestLogInterval time.Duration
	// Intercept turns TLS interception on for targets that ask for it
	// (intercept.go).
	Intercept InterceptOptions
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 30
	}
	if o.RetryBufferBytes <= 0 {
		o.RetryBufferBytes = 1 << 20
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 120 * time.Second
	}
	if o.BodyReadTimeout <= 0 {
		o.BodyReadTimeout = 30 * time.Second
	}
	if o.TunnelIdleTimeout <= 0 {
		o.TunnelIdleTimeout = 10 * time.Minute
	}
	if o.MaxClientRequests == 0 {
		o.MaxClientRequests = 512
	}
	if o.MaxClientTunnels == 0 {
		o.MaxClientTunnels = 256
	}
	if o.Upstream.Connect <= 0 {
		o.Upstream.Connect = 10 * time.Second
	}
	if o.Upstream.Response <= 0 {
		o.Upstream.Response = 60 * time.Second
	}
	if o.Upstream.IdleConns <= 0 {
		o.Upstream.IdleConns = 90 * time.Second
	}
}

// Server serves client connections.
type Server struct {
	opts    Options
	log     *slog.Logger
	targets atomic.Pointer[[]*Target]
	setMu   sync.Mutex // serialises SetTargets

	ctx    context.Context // ends when the server is forced down
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*clientConn]struct{}
	draining  atomic.Bool
	wg        sync.WaitGroup
	limits    connLimits
	lastLimit time.Time // when a refusal at a limit was last logged; under mu
	refused   int       // refusals since then; under mu

	bufs  sync.Pool // 32 KiB copy buffers (response bodies, tunnels)
	cbufs *connBufs // client connections' readers and writers

	reqLog    *logrl.Limiter // lines of failed and refused requests
	acceptLog *logrl.Limiter // lines of failed accepts (EMFILE...), retried
	inflight  clientLimits   // requests and tunnels in flight per client

	icptOnce sync.Once   // builds icptConf
	icptConf *tls.Config // intercepted connections' server config
}

// New returns a server routing to targets, in order: the first target
// whose regex matches a request gets it.
func New(targets []*Target, opts Options) *Server {
	opts.defaults()
	s := &Server{
		opts:      opts,
		log:       opts.Logger.With("component", "proxy"),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*clientConn]struct{}{},
		limits:    connLimits{perClient: map[netip.Prefix]int{}},
		cbufs:     newConnBufs(),
	}
	s.reqLog = logrl.New(s.log, logrl.Options{Burst: opts.RequestLogBurst, Interval: opts.RequestLogInterval, KeyAttr: "reason"})
	// Accept errors repeat on every retry while they last (out of file
	// descriptors): bounded as the request lines are, under one key.
	s.acceptLog = logrl.New(s.log, logrl.Options{Burst: opts.RequestLogBurst, Interval: opts.RequestLogInterval, KeyAttr: "what"})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	s.SetTargets(targets)
	return s
}

// SetTargets replaces the routing table in one atomic swap: a request is
// matched against either the old table or the new one, never a mix, and
// requests in flight keep the target they matched. A target named like one
// in the old table is its next generation: it takes over that target's
// idle upstream connections when its TLS config is the same pointer, and
// IPs it drops stop keeping connections (those in use close when their
// request ends). Targets no longer listed close theirs the same way. See
// reload.go.
func (s *Server) SetTargets(targets []*Target) {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	var old []*Target
	if p := s.targets.Load(); p != nil {
		old = *p
	}
	s.link(old, targets)
	s.targets.Store(&targets)
	s.settle(old, targets)
}

// dialer returns the dialer for outgoing connections.
func (s *Server) dialer() *net.Dialer {
	if s.opts.Dialer != nil {
		return s.opts.Dialer
	}
	return &net.Dialer{KeepAlive: 30 * time.Second}
}

// Listen opens a TCP listener suitable for the server (MPTCP off, so that
// accepted sockets can later join a BPF sockmap).
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(ctx, "tcp", addr)
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy server closed")

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.draining.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.acceptLog.Log(context.Background(), slog.LevelWarn, "accept", "accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		cc := s.track(c)
		if cc == nil {
			continue
		}
		go s.serveConn(cc, s.handle)
	}
}

const (
	stateIdle int32 = iota
	stateActive
)

type clientConn struct {
	c net.Conn
	// br and bw come from the server's pool when a request arrives and go
	// back while the connection waits for the next one or relays a tunnel
	// (see conn.go): nil then.
	br    *bufio.Reader
	bw    *bufio.Writer
	bufs  *connBufs
	state atomic.Int32
	key   netip.Prefix // what MaxConnsPerClient counts
	// first is the byte that ended a wait for a request, until br reads it.
	first    [1]byte
	hasFirst bool
	// handedOff: a relay owns the connection now (relayDetached); the
	// serving goroutine returns without closing it.
	handedOff bool
	// idleSince is when the idle wait a fresh goroutine takes over began
	// (requestLoop's hop); zero otherwise.
	idleSince time.Time

	// The last X-Proxy-Hopper-Target value and its parse: keep-alive
	// clients send the same one on every request.
	lastTarget string
	lastBase   *url.URL

	// icpt is set on intercepted connections: the connection's
	// destination and principal, which its requests carry.
	icpt *interception
	// done, when set, runs when the connection ends (untrack).
	done func()
	// h2, on an HTTP/2 stream's in-memory connection, takes the origin's
	// answer straight to the stream (intercept_h2.go).
	h2 *h2Out
}

// track registers a new client connection, or closes it and returns nil
// when the server is draining or a connection limit is reached.
func (s *Server) track(c net.Conn) *clientConn {
	key := clientKey(c.RemoteAddr())
	s.mu.Lock()
	reason := ""
	switch {
	case s.draining.Load():
		s.mu.Unlock()
		c.Close()
		return nil
	case s.opts.MaxConns > 0 && len(s.conns) >= s.opts.MaxConns:
		reason = RefusedGlobalLimit
	case s.opts.MaxConnsPerClient > 0 && s.limits.perClient[key] >= s.opts.MaxConnsPerClient:
		reason = RefusedClientLimit
	}
	if reason != "" {
		s.refused++
		logNow := time.Since(s.lastLimit) >= 10*time.Second
		n := s.refused
		if logNow {
			s.lastLimit, s.refused = time.Now(), 0
		}
		open := len(s.conns)
		s.mu.Unlock()
		closeRefused(c)
		if s.opts.RefusedConn != nil {
			s.opts.RefusedConn(reason)
		}
		if logNow {
			// At most one line per 10s however many are refused.
			s.log.Warn("connection limit reached; refusing connections", "reason", reason,
				"client", key.String(), "open", open, "refused", n)
		}
		return nil
	}
	cc := &clientConn{c: c, bufs: s.cbufs, key: key}
	s.conns[cc] = struct{}{}
	s.limits.perClient[key]++
	s.wg.Add(1)
	s.mu.Unlock()
	return cc
}

// ActiveConns is the number of client connections open now (keep-alive,
// tunnels and transparent connections included).
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) untrack(cc *clientConn) {
	cc.dropBufs()
	if cc.done != nil {
		cc.done()
	}
	s.mu.Lock()
	delete(s.conns, cc)
	if n := s.limits.perClient[cc.key] - 1; n > 0 {
		s.limits.perClient[cc.key] = n
	} else {
		delete(s.limits.perClient, cc.key)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting, lets requests in flight finish, closes idle
// connections, and when ctx ends closes whatever is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.closeIdle()
		select {
		case <-done:
			s.closeUpstreams()
			return nil
		case <-ctx.Done():
			s.cancel()
			s.mu.Lock()
			for cc := range s.conns {
				cc.c.Close()
			}
			s.mu.Unlock()
			<-done
			s.closeUpstreams()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (s *Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cc := range s.conns {
		if cc.state.Load() == stateIdle {
			_ = cc.c.SetReadDeadline(time.Unix(1, 0))
		}
	}
}

func (s *Server) closeUpstreams() {
	if ts := s.targets.Load(); ts != nil {
		for _, t := range *ts {
			t.tr.closeIdle()
		}
	}
}

// serveConn reads requests from one client connection until it closes,
// handing each head to handle.
func (s *Server) serveConn(cc *clientConn, handle func(*clientConn, *RequestHead) bool) {
	s.serveFrom(cc, handle, true)
}

// serveFrom runs the request loop of cc from its first request, or (first
// false) from an idle wait begun on another goroutine.
func (s *Server) serveFrom(cc *clientConn, handle func(*clientConn, *RequestHead) bool, first bool) {
	if s.requestLoop(cc, handle, first, true) {
		return // it goes on on a fresh goroutine
	}
	if !cc.handedOff { // else a relay owns it (relayDetached)
		cc.c.Close()
		s.untrack(cc)
	}
}

// requestLoop reads request heads until the connection should close. A
// connection's first byte must come within headerTimeout (a connection
// that never sends one is closed then, not after idleTimeout); between
// requests a keep-alive connection may stay idleTimeout. Waits hold no
// buffers beyond keepAliveGrace.
//
// With hop, a connection idle beyond keepAliveGrace goes on waiting on a
// fresh goroutine, whose stack is small, while this one (its stack grown
// by the requests it served) ends: requestLoop then returns true, and the
// caller must leave cc alone.
func (s *Server) requestLoop(cc *clientConn, handle func(*clientConn, *RequestHead) bool, first, hop bool) (moved bool) {
	for ; ; first = false {
		cc.state.Store(stateIdle)
		if s.draining.Load() {
			return false
		}
		start := time.Now()
		if !cc.idleSince.IsZero() {
			start, cc.idleSince = cc.idleSince, time.Time{}
		}
		wait := s.opts.IdleTimeout
		if first {
			wait = s.opts.HeaderTimeout
		}
		ready := cc.br != nil && cc.br.Buffered() > 0
		if !ready && !first && cc.br != nil {
			// The next request usually follows at once: wait a moment
			// with the buffers before giving them back.
			_ = cc.c.SetReadDeadline(start.Add(min(keepAliveGrace, wait)))
			_, err := cc.br.Peek(1)
			switch {
			case err == nil:
				ready = true
			case !isTimeout(err) || s.draining.Load():
				return false
			case hop:
				cc.releaseBufs()
				cc.idleSince = start
				go s.serveFrom(cc, handle, false)
				return true
			}
		}
		if !ready {
			if err := cc.awaitData(start.Add(wait)); err != nil {
				return false
			}
		}
		cc.state.Store(stateActive)
		_ = cc.c.SetReadDeadline(time.Now().Add(s.opts.HeaderTimeout))
		head, err := ReadRequestHead(cc.br, s.opts.MaxHeaderBytes)
		if err != nil {
			var he *HeadError
			if errors.As(err, &he) {
				s.log.Debug("bad request head", "client", cc.c.RemoteAddr().String(), "status", he.Status, "reason", he.Reason)
				_ = writeJSON(cc.bw, he.Status, 1, false, clientError(he.Reason))
				lingerClose(cc.c)
			}
			return false
		}
		_ = cc.c.SetReadDeadline(time.Time{})
		if !handle(cc, head) {
			if !cc.handedOff {
				lingerClose(cc.c)
			}
			return false
		}
	}
}

// lingerClose ends a connection the agent gave up on while the client may
// still be sending: half-close, then read and drop what arrives for a
// moment, so the kernel does not answer the client's unread bytes with a
// reset that would destroy the response it has not read yet.
func lingerClose(c net.Conn) {
	cw, ok := c.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.CopyN(io.Discard, c, 256<<10)
}
