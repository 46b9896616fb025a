// Package agent turns a configuration into a running proxy-hopper: it
// loads and validates the config, builds one pool per target over the
// chosen backend, wires the proxy server, and runs them until told to stop.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	redisbackend "github.com/proxy-hopper/proxy-hopper/pool/redis"
	"github.com/proxy-hopper/proxy-hopper/prober"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// Options are what a caller (the CLI, the demo, tests) adds to a Config.
type Options struct {
	Logger   *slog.Logger
	Listener net.Listener // serve here instead of server.host:port
	Hooks    proxy.Hooks  // observe requests and attempts
	Clock    pool.Clock   // default wall clock
	Backend  pool.Backend // default from server.backend

	// ConfigPath is the file cfg was loaded from, with the Overrides (CLI
	// flags) it was loaded with. When set, Run reloads it on SIGHUP (and on
	// changes with server.watchConfig); see reload.go.
	ConfigPath string
	Overrides  map[string]any

	// Version is the agent's version, for proxy_hopper_build_info.
	Version string
}

// Agent is a wired proxy-hopper instance.
type Agent struct {
	cfg     *Config
	log     *slog.Logger
	backend pool.Backend
	opts    Options
	live    atomic.Pointer[[]*proxy.Target] // the routing table in force
	reload  reloadState                     // per-target runtime, see reload.go
	srv     *proxy.Server
	ln      net.Listener
	tp      io.Closer                      // local transparent mode, when on
	tpDrain io.Closer                      // stopped transparent mode, released after the drain
	gw      atomic.Pointer[runningGateway] // gateway mode, when on
	mx      *agentMetrics                  // server.metrics, when on
	adm     *agentAdmin                    // server.admin, when on

	prober     *prober.Prober     // server.probe, when on
	proberStop context.CancelFunc // set by startProber
	proberDone chan struct{}      // closed when the prober has stopped
}

// New validates cfg and builds every part without starting anything.
func New(ctx context.Context, cfg *Config, opts Options) (*Agent, error) {
	resolved, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, log: log, backend: opts.Backend, ln: opts.Listener, opts: opts}
	if a.backend == nil {
		switch cfg.Server.Backend {
		case "", "memory":
			a.backend = memory.New(opts.Clock)
		case "redis":
			s := cfg.Server
			rb, err := redisbackend.New(s.RedisURL, redisbackend.Options{
				Prefix: s.RedisKeyPrefix, LeaseTTL: s.RedisLeaseTTL.D(), Clock: opts.Clock, Logger: log,
			})
			if err != nil {
				return nil, fmt.Errorf("server.redisUrl: %w", err)
			}
			redisbackend.RouteClientLogs(log)
			a.backend = rb
		default:
			return nil, fmt.Errorf("server.backend: %q is not available in this build (want memory or redis)", cfg.Server.Backend)
		}
	}
	ok := false
	defer func() {
		if !ok {
			a.closePools()
			a.backend.Close()
		}
	}()
	if a.mx, err = newAgentMetrics(a); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	a.adm = newAgentAdmin(a) // before the pools: their hooks feed its recorder
	targets, err := a.buildTargets(ctx, cfg, resolved)
	if err != nil {
		return nil, err
	}
	a.live.Store(&targets)
	if a.prober, err = a.newProber(opts.Clock); err != nil {
		return nil, fmt.Errorf("prober: %w", err)
	}
	authn, err := cfg.authenticator()
	if err != nil {
		return nil, err
	}
	s := cfg.Server
	nofile, err := raiseFDLimit()
	if err != nil {
		log.Warn("cannot raise the open file limit", "err", err)
	}
	maxConns := connectionLimit(s, nofile, log)
	log.Debug("client connection limits", "fdLimit", nofile, "maxConnections", maxConns, "maxConnectionsPerClient", s.MaxConnectionsPerClient)
	a.srv = proxy.New(targets, proxy.Options{
		MaxConns:          maxConns,
		MaxConnsPerClient: s.MaxConnectionsPerClient,
		RefusedConn:       a.mx.connRefused(),
		Auth:              authn,
		Destinations:      cfg.destinationPolicy(opts.Listener),
		Logger:            log,
		MaxBodyBytes:      int64(s.MaxBodySize),
		RetryBufferBytes:  int64(s.RetryBufferSize),
		HeaderTimeout:     s.HeaderTimeout.D(),
		IdleTimeout:       s.IdleTimeout.D(),
		TunnelIdleTimeout: s.TunnelIdleTimeout.D(),
		MaxClientRequests: noCapIfZero(s.MaxClientRequests),
		MaxClientTunnels:  noCapIfZero(s.MaxClientTunnels),
		Upstream: proxy.Timeouts{
			Connect:  s.ConnectTimeout.D(),
			Response: s.ProxyReadTimeout.D(),
		},
		Hooks:       a.adm.proxyHooks(a.mx.proxyHooks(opts.Hooks)),
		Transparent: proxy.TransparentOptions{Unmatched: cfg.Transparent.Unmatched},
		Dialer:      transparentDialer(cfg),

		RequestLogBurst:    s.RequestLogBurst,
		RequestLogInterval: s.RequestLogInterval.D(),
	})
	ok = true
	return a, nil
}

// noCapIfZero maps a config cap where 0 means none to proxy.Options,
// where 0 means the default and a negative value none.
func noCapIfZero(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// Targets returns the wired targets, in match order.
func (a *Agent) Targets() []*proxy.Target {
	if p := a.live.Load(); p != nil {
		return *p
	}
	return nil
}

// Addr is where the agent listens once Run has started (nil before).
func (a *Agent) Addr() net.Addr {
	if a.ln == nil {
		return nil
	}
	return a.ln.Addr()
}

// Listen opens the listener now (so callers learn the address before Run).
func (a *Agent) Listen(ctx context.Context) error {
	if a.ln != nil {
		return nil
	}
	addr := net.JoinHostPort(a.cfg.Server.Host, strconv.Itoa(a.cfg.Server.Port))
	ln, err := proxy.Listen(ctx, addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	a.ln = ln
	return nil
}

// Run serves until ctx ends, then shuts down gracefully: it stops accepting,
// answers requests still queued for an IP with 503, lets requests in flight
// finish within server.shutdownTimeout, and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Listen(ctx); err != nil {
		a.closePools()
		a.backend.Close()
		return err
	}
	if err := a.mx.start(ctx); err != nil {
		a.ln.Close()
		a.closePools()
		a.backend.Close()
		return fmt.Errorf("metrics: %w", err)
	}
	defer a.mx.stop()
	if err := a.adm.start(ctx); err != nil {
		a.ln.Close()
		a.closePools()
		a.backend.Close()
		return fmt.Errorf("admin: %w", err)
	}
	defer a.adm.stop()
	a.log.Info("proxy-hopper listening", "addr", a.ln.Addr().String(), "targets", len(a.Targets()), "backend", a.backendName())
	// Under the reload lock: a reload or admin IP edit meanwhile waits
	// until both modes have taken the upstreams they must not intercept.
	a.reload.mu.Lock()
	a.tp = a.startLocalTransparent(ctx)
	a.startGateway(ctx)
	a.reload.mu.Unlock()
	a.startProber(ctx)
	stopReloads := a.startReloads(ctx)
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	stopReloads()
	grace := a.cfg.Server.ShutdownTimeout.D()
	if grace <= 0 {
		grace = 30 * time.Second
	}
	a.log.Info("shutting down", "grace", grace)
	a.adm.stopping() // /readyz: 503 from now on
	a.stopLocalTransparent()
	a.drainGateway()
	a.stopProber()    // probes in flight are cut
	a.backend.Close() // queued requests get 503 now
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	shutErr := a.srv.Shutdown(sctx)
	a.releaseLocalTransparent()
	a.stopGateway()
	a.closePools()
	if serveErr != nil && !errors.Is(serveErr, proxy.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	if shutErr != nil {
		a.log.Warn("in-flight requests cut at the end of the grace period", "grace", grace)
	}
	a.log.Info("stopped")
	return nil
}

func (a *Agent) backendName() string {
	if a.cfg.Server.Backend == "" {
		return "memory"
	}
	return a.cfg.Server.Backend
}

func (a *Agent) closePools() {
	a.reload.closePools()
}
