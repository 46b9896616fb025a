package agent

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxy-hopper/proxy-hopper/metrics"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// agentMetrics is the agent's Prometheus side (server.metrics): its own
// registry, the hook-fed metrics, the pool collector and the /metrics
// endpoint on server.metricsHost:metricsPort. A nil *agentMetrics (metrics off) is
// valid and does nothing.
type agentMetrics struct {
	reg   *prometheus.Registry
	m     *metrics.Metrics
	addr  string
	token string // server.metricsToken: /metrics needs it when set
	log   *slog.Logger
	srv   atomic.Pointer[metrics.Server] // set by start
	done  chan struct{}
}

// newAgentMetrics builds the metrics of a when server.metrics is on. Call
// it once a.backend is set; the collector reads a's targets at scrape time.
func newAgentMetrics(a *Agent) (*agentMetrics, error) {
	s := a.cfg.Server
	if !s.Metrics {
		return nil, nil
	}
	reg := metrics.NewRegistry()
	m, err := metrics.NewWithOptions(reg, metrics.Options{TagLimit: s.MetricsTagLimit, Version: a.opts.Version})
	if err != nil {
		return nil, err
	}
	if err := reg.Register(metrics.NewPoolCollector(a.Targets, 0)); err != nil {
		return nil, err
	}
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "proxy_hopper", Name: "active_connections",
		Help: "Client connections open now (keep-alive, tunnels and transparent connections included)."},
		func() float64 {
			if a.srv == nil {
				return 0
			}
			return float64(a.srv.ActiveConns())
		})
	if err := reg.Register(active); err != nil {
		return nil, err
	}
	if a.minter != nil {
		if err := reg.Register(metrics.NewMinterCollector(a.minter.Stats)); err != nil {
			return nil, err
		}
	}
	if err := a.registerGatewayCollector(reg); err != nil {
		return nil, err
	}
	host := s.MetricsHost
	if host == "" {
		host = s.Host
	}
	return &agentMetrics{
		reg: reg, m: m, log: a.log.With("component", "metrics"), token: s.MetricsToken,
		addr: net.JoinHostPort(host, strconv.Itoa(s.MetricsPort)),
	}, nil
}

// poolHooks returns h, with the metrics hooks of target's pool added when
// metrics are on.
func (x *agentMetrics) poolHooks(target string, ups map[string]proxy.Upstream, h pool.Hooks) pool.Hooks {
	if x == nil {
		return h
	}
	return h.Then(x.m.PoolHooks(target, metrics.LabelsOf(ups)))
}

// identityRotated returns the OnRotate callback of target's identity
// store (nil when metrics are off).
func (x *agentMetrics) identityRotated(target string) func(addr, reason string) {
	if x == nil {
		return nil
	}
	return x.m.IdentityRotated(target)
}

// connRefused is the proxy's RefusedConn callback (nil when metrics are
// off).
func (x *agentMetrics) connRefused() func(reason string) {
	if x == nil {
		return nil
	}
	return x.m.ConnRefused
}

// proxyHooks returns h, followed by the metrics hooks when metrics are on.
func (x *agentMetrics) proxyHooks(h proxy.Hooks) proxy.Hooks {
	if x == nil {
		return h
	}
	return h.Then(x.m.ProxyHooks())
}

// start opens the metrics endpoint and serves it in the background.
func (x *agentMetrics) start(ctx context.Context) error {
	if x == nil {
		return nil
	}
	srv, err := metrics.Listen(ctx, x.addr, x.reg, x.log)
	if err != nil {
		return err
	}
	if x.token != "" {
		srv.RequireToken(x.token, nil, x.log)
	}
	x.done = make(chan struct{})
	x.srv.Store(srv)
	x.log.Info("metrics listening", "addr", srv.Addr().String())
	go func() {
		defer close(x.done)
		if err := srv.Serve(); err != nil {
			x.log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	return nil
}

// stop closes the metrics endpoint, giving scrapes in progress a moment.
func (x *agentMetrics) stop() {
	if x == nil || x.srv.Load() == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = x.srv.Load().Shutdown(ctx)
	<-x.done
}

// MetricsAddr is where /metrics is served once Run has started (nil when
// server.metrics is off or before Run).
func (a *Agent) MetricsAddr() net.Addr {
	if a.mx == nil {
		return nil
	}
	if srv := a.mx.srv.Load(); srv != nil {
		return srv.Addr()
	}
	return nil
}

// configReload counts one config reload (applied or rejected).
func (x *agentMetrics) configReload(ok bool) {
	if x == nil {
		return
	}
	x.m.ConfigReload(ok)
}
