// Package admin serves proxy-hopper's admin API and live status page on
// their own listener (server.admin): JSON endpoints to list every target's
// IPs and their state, quarantine and release an IP, add and remove IPs at
// run time; /healthz and /readyz for orchestrators; and an HTML status page
// at / that redraws itself from the API every couple of seconds.
//
// Every endpoint but /healthz and /readyz needs the admin token: an
// `Authorization: Bearer <token>` header, or for the browser a session
// cookie (a random id with a server-side expiry) set by the login form or
// a one-time login link. A session remembers whether its login may write;
// the page's changes need, besides the cookie, the session's CSRF token
// in X-CSRF-Token and a same-origin request. Wrong tokens are limited per
// source address (429).
package admin

import (
	"context"
	"errors"
	"fmt"
	graphql "github.com/graph-gophers/graphql-go"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/authfail"
	"github.com/proxy-hopper/proxy-hopper/internal/logrl"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// Sentinel errors an IPEditor returns (wrapped) so the API picks the status.
var (
	// ErrUnknownTarget: no target of that name (404).
	ErrUnknownTarget = errors.New("unknown target")
	// ErrUnknownIP: the target has no such IP (404).
	ErrUnknownIP = pool.ErrUnknownIP
	// ErrIPExists: the target already has that IP (409).
	ErrIPExists = errors.New("IP already in the target")
	// ErrNotConfigured: the server was built without that capability (501).
	ErrNotConfigured = errors.New("not available in this agent")
)

// IPEditor changes the IP list of a target at run time. The agent
// implements it as a reload of that list: an added IP takes traffic at
// once, a removed one drains (a use in flight finishes, then it is gone).
type IPEditor interface {
	// IPs returns the target's configured IPs (draining ones excluded),
	// and false when there is no such target.
	IPs(target string) ([]string, bool)
	// AddIP adds addr (host:port) to target; ErrUnknownTarget, ErrIPExists.
	AddIP(ctx context.Context, target, addr string) error
	// RemoveIP removes addr from target (the last one too: the target's
	// requests then wait for an IP); ErrUnknownTarget, pool.ErrUnknownIP.
	RemoveIP(ctx context.Context, target, addr string) error
}

// ProbeResult is the last probe of an upstream IP.
type ProbeResult struct {
	OK      bool
	Latency time.Duration
	At      time.Time
	Reason  string // failure class (timeout, proxy_unreachable, ...); empty when OK
}

// ProbeSource tells the last probe result of an IP, when the prober has
// probed it (known false otherwise).
type ProbeSource interface {
	ProbeStatus(addr string) (r ProbeResult, known bool)
}

// ProbeFunc adapts a function to ProbeSource.
type ProbeFunc func(addr string) (ProbeResult, bool)

// ProbeStatus implements ProbeSource.
func (f ProbeFunc) ProbeStatus(addr string) (ProbeResult, bool) { return f(addr) }

// Pinger is a pool backend that can tell whether its storage answers now
// (the Redis backend). Backends that are not Pingers are always reachable.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Options configures a Server.
type Options struct {
	// Token is the static admin bearer token: it may read and change
	// everything. Optional: see Auth.
	Token string
	// Auth, when enabled, lets auth's tokens in too (JWTs of POST
	// /auth/login and of an OIDC issuer): GET needs a role with read,
	// changes a role with write. With neither Token nor Auth enabled the
	// API is open to read and refuses changes.
	Auth Authenticator
	// Login serves POST /auth/login (auth.NewLoginHandler); nil answers
	// 404, as proxy-hopper without auth.admin.
	Login http.Handler
	// Repository is the runtime configuration behind /graphql; nil
	// answers 404 there.
	Repository Repository
	// AuthEnabled is reported by /api/v1/status (proxy-hopper's auth.enabled).
	AuthEnabled bool
	// Targets returns the wired targets, in match order, at each request.
	Targets func() []*proxy.Target
	// Backend is the pool backend; /readyz pings it when it is a Pinger.
	Backend pool.Backend
	// BackendName is shown on /readyz and the page (memory, redis).
	BackendName string
	// IPs adds and removes IPs; nil answers those endpoints with 501.
	IPs IPEditor
	// Probes gives the last probe of an IP; nil shows none.
	Probes ProbeSource
	// Version is the agent's version, shown on the page.
	Version string
	// Started is when the agent started (default: when New ran).
	Started time.Time
	// Bytes reads the gateway's BPF byte counters per upstream IP
	// address; nil when gateway mode is off (the page shows none).
	Bytes func() (map[netip.Addr]ByteCounts, error)
	// PageIPs is how many IPs per target the page lists at once
	// (DefaultPageIPs); the rest are reached with its filter and pages.
	PageIPs int
	// Recorder feeds request counts, rate, outcomes and events; nil: a
	// fresh one nobody feeds.
	Recorder *Recorder
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// RefreshInterval is how often the page refetches (default 2s).
	RefreshInterval time.Duration
	// CheckTimeout bounds each /readyz check (default 2s).
	CheckTimeout time.Duration
	// SessionTTL is how long a browser session lasts (DefaultSessionTTL).
	SessionTTL time.Duration
	// SecureCookie marks the session cookie Secure on every request, for
	// an admin listener behind a TLS-terminating proxy (without it the
	// cookie is Secure when the request itself came over TLS).
	SecureCookie bool
	// MaxSessions bounds the live sessions (DefaultMaxSession).
	MaxSessions int
	// Failures limits and logs wrong tokens per source; nil: a limiter
	// with authfail's defaults.
	Failures *authfail.Limiter
}

// DefaultPageIPs is how many IPs per target the page lists at once.
const DefaultPageIPs = 200

// Server is the admin endpoint of one agent.
type Server struct {
	opts     Options
	log      *slog.Logger
	sessions *sessionStore // browser sessions
	links    *sessionStore // one-time login links
	fails    *authfail.Limiter
	handler  http.Handler
	gql      *graphql.Schema // nil without a Repository
	refusals *logrl.Limiter  // refused changes (CSRF), rate-limited
	stopping atomic.Bool

	srv *http.Server
	ln  net.Listener
}

// New builds the admin handler; Listen opens its socket.
func New(opts Options) (*Server, error) {
	if opts.Targets == nil {
		return nil, errors.New("admin: no targets")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Started.IsZero() {
		opts.Started = opts.Now()
	}
	if opts.PageIPs <= 0 {
		opts.PageIPs = DefaultPageIPs
	}
	if opts.Recorder == nil {
		opts.Recorder = NewRecorder(opts.Now, 0)
	}
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = 2 * time.Second
	}
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = 2 * time.Second
	}
	if opts.BackendName == "" {
		opts.BackendName = "memory"
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSession
	}
	log := opts.Logger.With("component", "admin")
	if opts.Failures == nil {
		opts.Failures = authfail.New(authfail.Options{What: "admin token", Log: log, Now: opts.Now})
	}
	s := &Server{
		opts: opts, log: log, fails: opts.Failures,
		sessions: newSessionStore(opts.SessionTTL, opts.MaxSessions, opts.Now),
		links:    newSessionStore(loginLinkTTL, maxLoginLinks, opts.Now),
	}
	s.refusals = logrl.New(log, logrl.Options{})
	if opts.Repository != nil {
		g, err := newGraphQL(s, opts.Repository)
		if err != nil {
			return nil, fmt.Errorf("admin: graphql schema: %w", err)
		}
		s.gql = g
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the whole admin endpoint, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// Listen opens addr (host:port) for Serve.
func (s *Server) Listen(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return nil
}

// Addr is where the endpoint listens (nil before Listen).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Serve serves until Shutdown, then returns nil.
func (s *Server) Serve() error {
	if s.srv == nil {
		return errors.New("admin: Serve before Listen")
	}
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve admin: %w", err)
	}
	return nil
}

// Stopping makes /readyz answer 503 from now on: the agent is shutting down.
func (s *Server) Stopping() { s.stopping.Store(true) }

// Shutdown stops the endpoint, letting requests in progress finish until
// ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Stopping()
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

// routes wires the endpoints. /api/ as a whole sits behind the token, so
// an unauthenticated caller learns nothing about which paths exist.
func (s *Server) routes() http.Handler {
	api := http.NewServeMux()
	api.HandleFunc("GET /api/status", s.getStatus)
	api.HandleFunc("GET /api/targets", s.getTargets)
	api.HandleFunc("GET /api/targets/{target}", s.getTarget)
	api.HandleFunc("GET /api/events", s.getEvents)
	api.HandleFunc("POST /api/targets/{target}/ips", s.addIP)
	api.HandleFunc("DELETE /api/targets/{target}/ips/{ip}", s.removeIP)
	api.HandleFunc("POST /api/targets/{target}/ips/{ip}/quarantine", s.quarantine)
	api.HandleFunc("POST /api/targets/{target}/ips/{ip}/release", s.release)
	api.HandleFunc("POST /api/login-link", s.newLoginLink)
	api.HandleFunc("GET /api/v1/status", s.v1Status)
	api.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("GET /login", s.loginLink)
	mux.HandleFunc("POST /logout", s.logout)
	login := s.opts.Login
	if login == nil {
		login = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Local authentication is not configured"})
		})
	}
	mux.Handle("POST /auth/login", login)
	mux.Handle("/graphql", s.requireCaller(http.HandlerFunc(s.serveGraphQL)))
	mux.HandleFunc("GET /health", s.healthz) // proxy-hopper's liveness path
	mux.Handle("/api/", s.requireToken(api))
	return securityHeaders(mux)
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Frame-Options", "DENY")
		h.ServeHTTP(w, r)
	})
}

// healthz: the process is up and serving.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

// readyz: the backend answers and every pool can be read. A target with
// no IPs (all removed) is not a reason: the other targets serve. Without
// a token that may read the answer says only which check failed; the
// details (the backend's error with its address, the target) need one.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	detailed := s.open()
	if tok, ok := bearer(r); ok && !s.open() {
		res, acc, wait := s.checkToken(r, tok, "readyz")
		if res != tokenOK {
			s.refuseToken(w, res, wait)
			return
		}
		detailed = acc.can("read")
	}
	notReady := func(reason, detail string) {
		body := map[string]any{"ready": false, "reason": reason, "backend": s.opts.BackendName}
		if detailed {
			body["detail"] = detail
		}
		s.log.Debug("not ready", "reason", reason, "detail", detail)
		writeJSON(w, http.StatusServiceUnavailable, body)
	}
	if s.stopping.Load() {
		notReady("shutting down", "")
		return
	}
	if p, ok := s.opts.Backend.(Pinger); ok {
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.CheckTimeout)
		err := p.Ping(ctx)
		cancel()
		if err != nil {
			notReady("backend unreachable", fmt.Sprintf("backend %s unreachable: %v", s.opts.BackendName, err))
			return
		}
	}
	targets := s.opts.Targets()
	for _, t := range targets {
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.CheckTimeout)
		_, err := t.Pool.Snapshot(ctx)
		cancel()
		if err != nil {
			notReady("pool unreadable", fmt.Sprintf("target %s: read pool: %v", t.Name, err))
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true, "targets": len(targets), "backend": s.opts.BackendName})
}

// PublicAddr strips any user-info (user:pass@) from an upstream address,
// so credentials never reach an API answer, the page or a log line.
func PublicAddr(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}
