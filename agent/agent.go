// Package agent turns a resolved configuration (package config) into a
// running proxy-hopper: it builds one pool per target over the chosen
// backend, wires the proxy server, runs them until told to stop, and
// applies reloads (reload.go) from SIGHUP and the file watcher (watch.go).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/intercept/local"
	"github.com/proxy-hopper/proxy-hopper/mitm"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	redisbackend "github.com/proxy-hopper/proxy-hopper/pool/redis"
	"github.com/proxy-hopper/proxy-hopper/prober"
	"github.com/proxy-hopper/proxy-hopper/proxy"
	"github.com/proxy-hopper/proxy-hopper/store"
)

// Options are what a caller (the CLI, the demo, tests) adds to a Config.
type Options struct {
	Logger   *slog.Logger
	Listener net.Listener // serve here instead of server.host:port
	Hooks    proxy.Hooks  // observe requests and attempts
	Clock    pool.Clock   // default wall clock
	Backend  pool.Backend // default from server.backend
	// Store holds the runtime configuration; default: the Redis backend's
	// (shared by every agent on that Redis and prefix), else in memory.
	Store store.Store

	// ConfigPath is the file cfg was loaded from, with the Overrides (CLI
	// flags) it was loaded with. When set, Run reloads it on SIGHUP (and on
	// changes with server.watchConfig); see reload.go.
	ConfigPath string
	Overrides  map[string]any
	// Hangup, when set, is the caller's SIGHUP channel (signal.Notify'd
	// before New): each signal on it reloads the config file once Run
	// takes reloads, so one that arrives during start-up is queued (the
	// channel's buffer) instead of lost. Without it, Run registers its own.
	Hangup <-chan os.Signal

	// Version is the agent's version, for proxy_hopper_build_info.
	Version string
}

// Agent is a wired proxy-hopper instance.
type Agent struct {
	cfg     *config.Config   // as loaded, the running values of the restart-only keys
	res     *config.Resolved // cfg resolved, as started
	log     *slog.Logger
	backend pool.Backend
	rs      store.Store // the runtime configuration (runtime.go)
	opts    Options
	live    atomic.Pointer[[]*proxy.Target] // the routing table in force
	reload  reloadState                     // per-target runtime, see reload.go
	srv     *proxy.Server
	ln      net.Listener
	tp      *local.Mode                    // local transparent mode, when on
	tpDrain *local.Mode                    // stopped transparent mode, released after the drain
	gw      atomic.Pointer[runningGateway] // gateway mode, when on
	mx      *agentMetrics                  // server.metrics, when on
	adm     *agentAdmin                    // server.admin, when on
	authn   *auth.Authenticator            // auth, for the proxy and the admin API (restart-only)
	minter  *mitm.Minter                   // interception's leaf certificates, when a CA is configured

	prober     *prober.Prober     // server.probe, when on
	proberStop context.CancelFunc // set by startProber
	proberDone chan struct{}      // closed when the prober has stopped
}

// New builds every part of a resolved config without starting anything.
func New(ctx context.Context, res *config.Resolved, opts Options) (*Agent, error) {
	cfg := res.Config
	var err error
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, res: res, log: log, backend: opts.Backend, ln: opts.Listener, opts: opts}
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
	if ca := res.Interception.CA; ca != nil {
		if a.minter, err = mitm.NewMinter(ca, mitm.MinterOptions{}); err != nil {
			return nil, fmt.Errorf("interception: %w", err)
		}
	}
	if a.mx, err = newAgentMetrics(a); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	a.adm = newAgentAdmin(a) // before the pools: their hooks feed its recorder
	a.rs = openStore(a.backend, opts)
	defer func() {
		if !ok && opts.Store == nil {
			a.rs.Close()
		}
	}()
	a.reload.file = cfg
	effCfg, effTargets, err := a.initialTargets(ctx, res)
	if err != nil {
		return nil, err
	}
	targets, err := a.buildTargets(ctx, effCfg, effTargets)
	if err != nil {
		return nil, err
	}
	a.live.Store(&targets)
	if a.prober, err = a.newProber(opts.Clock); err != nil {
		return nil, fmt.Errorf("prober: %w", err)
	}
	ac := res.Auth
	if ac.Log == nil {
		ac.Log = log.With("component", "auth") // not slog.Default: the agent's format
	}
	authn, err := auth.New(ac)
	if err != nil {
		return nil, err
	}
	a.authn = authn
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
		Destinations:      destinationPolicy(res, opts.Listener),
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
		Transparent: proxy.TransparentOptions{Unmatched: res.Transparent.Unmatched},
		Dialer:      transparentDialer(res),

		RequestLogBurst:    s.RequestLogBurst,
		RequestLogInterval: s.RequestLogInterval.D(),
		Intercept:          interceptOptions(a.minter, res),
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
//
// The proxy server and the shutdown run under one errgroup: the shutdown
// starts when ctx ends or the server fails, and is the only path that
// stops the parts (also when Run fails to start them).
func (a *Agent) Run(ctx context.Context) error {
	defer a.mx.stop()
	defer a.adm.stop()
	stopReloads, err := a.start(ctx)
	if err != nil {
		a.shutdown()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.srv.Serve(a.ln); !errors.Is(err, proxy.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	var cut bool // requests in flight were cut at the end of the grace period
	g.Go(func() error {
		<-gctx.Done() // ctx ended, or Serve failed
		stopReloads()
		a.log.Info("shutting down", "grace", a.grace())
		cut = a.shutdown() != nil
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	if cut {
		a.log.Warn("in-flight requests cut at the end of the grace period", "grace", a.grace())
	}
	a.log.Info("stopped")
	return nil
}

// grace is how long requests in flight get to finish at shutdown.
func (a *Agent) grace() time.Duration {
	if g := a.cfg.Server.ShutdownTimeout.D(); g > 0 {
		return g
	}
	return 30 * time.Second
}

// start opens the listeners and starts every part, in this order: the
// proxy listener, metrics, admin, the interception modes, the prober and
// the config reloads. The proxy server itself is started by Run.
func (a *Agent) start(ctx context.Context) (stopReloads func(), err error) {
	if err := a.Listen(ctx); err != nil {
		return nil, err
	}
	if err := a.mx.start(ctx); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := a.adm.start(ctx); err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	a.reload.mu.Lock()
	a.startModes(ctx)
	a.reload.mu.Unlock()
	a.startProber(ctx)
	a.logStarted()
	return a.startReloads(ctx), nil
}

// shutdown stops what start started, in the order the drain needs: the
// readiness probe fails, the modes stop steering new connections here,
// the prober stops, queued requests get 503 (backend closed), requests in
// flight get grace to finish, then the modes' remaining state and the
// pools are released. What was not started is skipped. It returns the
// proxy server's shutdown error (requests cut at the end of the grace).
// Metrics and admin are stopped by Run last.
func (a *Agent) shutdown() error {
	a.adm.stopping() // /readyz: 503 from now on
	a.stopLocalTransparent()
	a.drainGateway()
	a.stopProber() // probes in flight are cut
	a.closeStore()
	a.backend.Close() // queued requests get 503 now
	var err error
	if a.ln != nil {
		sctx, cancel := context.WithTimeout(context.Background(), a.grace())
		err = a.srv.Shutdown(sctx)
		cancel()
		a.ln.Close() // never served when start failed
	}
	a.releaseLocalTransparent()
	a.stopGateway()
	a.closePools()
	return err
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

// closeStore stops the runtime store's notifications (one given in
// Options is the caller's to close).
func (a *Agent) closeStore() {
	if a.opts.Store == nil {
		a.rs.Close()
	}
}

// interceptOptions turn TLS interception on when a CA is configured.
func interceptOptions(m *mitm.Minter, res *config.Resolved) proxy.InterceptOptions {
	if m == nil {
		return proxy.InterceptOptions{}
	}
	return proxy.InterceptOptions{Minter: m, Bypass: res.Interception.Bypass.Has, HTTP2: true}
}
