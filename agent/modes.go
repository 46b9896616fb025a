package agent

import (
	"context"
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/intercept"
	"github.com/proxy-hopper/proxy-hopper/intercept/gateway"
	"github.com/proxy-hopper/proxy-hopper/intercept/local"
	"github.com/proxy-hopper/proxy-hopper/metrics"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// The interception modes' lifecycle in the agent: started by Run under
// the reload lock, refreshed after a reload, drained and stopped by its
// shutdown. A kernel without a needed feature (or any other setup failure)
// disables a mode with one error log; the rest of the agent runs on.

// runningGateway is gateway mode while it runs (*gateway.Mode).
type runningGateway interface {
	metrics.CounterSource
	Drain()
	Close() error
	ExcludeUpstreams([]netip.Prefix) // the upstream proxies changed
}

var _ runningGateway = (*gateway.Mode)(nil)

// startModes starts the configured modes. Caller holds a.reload.mu, so a
// reload or admin IP edit meanwhile waits until both modes have taken the
// upstreams they must not intercept.
func (a *Agent) startModes(ctx context.Context) {
	if a.cfg.Transparent.Local.Enabled {
		tp, err := local.Start(ctx, a.localOptions())
		if err != nil {
			a.log.Error("transparent mode disabled", "err", err)
		} else {
			a.tp = tp
		}
	}
	if a.cfg.Transparent.Gateway.Enabled {
		g, err := gateway.Start(ctx, a.gatewayOptions())
		if err != nil {
			a.log.Error("gateway mode disabled", "err", err)
		} else {
			var rg runningGateway = g
			a.gw.Store(&rg)
		}
	}
}

// upstreamPrefixes are the upstream proxies' addresses, never intercepted.
func (a *Agent) upstreamPrefixes(ctx context.Context) []netip.Prefix {
	var addrs []string
	for _, tg := range a.Targets() {
		for _, u := range tg.Upstreams {
			addrs = append(addrs, u.Addr)
		}
	}
	return intercept.UpstreamPrefixes(ctx, a.log, addrs)
}

// refreshTransparentUpstreams re-excludes the upstream proxies' addresses
// from the redirect after a reload changed them. Caller holds a.reload.mu.
func (a *Agent) refreshTransparentUpstreams(ctx context.Context) {
	if a.tp != nil {
		a.tp.ExcludeUpstreams(a.upstreamPrefixes(ctx))
	}
}

// refreshGatewayUpstreams re-excludes the upstream proxies' addresses
// from interception after a reload changed them. Caller holds a.reload.mu.
func (a *Agent) refreshGatewayUpstreams(ctx context.Context) {
	if g := a.gw.Load(); g != nil {
		(*g).ExcludeUpstreams(a.upstreamPrefixes(ctx))
	}
}

// stopLocalTransparent detaches the data plane first, so that new connects
// go to their destinations again while connections in flight drain.
func (a *Agent) stopLocalTransparent() {
	a.reload.mu.Lock() // a reload may update the data plane meanwhile
	tp := a.tp
	a.tp = nil
	a.reload.mu.Unlock()
	if tp == nil {
		return
	}
	if err := tp.Stop(); err != nil {
		a.log.Warn("detach transparent mode", "err", err)
	}
	a.tpDrain = tp
}

// releaseLocalTransparent releases what stopLocalTransparent left for the
// connections being drained (the fast path's maps: freeing them would drop
// the bytes still queued at the agent's sockets).
func (a *Agent) releaseLocalTransparent() {
	tp := a.tpDrain
	a.tpDrain = nil
	if tp == nil {
		return
	}
	if err := tp.Close(); err != nil {
		a.log.Warn("release transparent mode", "err", err)
	}
}

// drainGateway stops intercepting new flows: from now on they are routed
// as if the agent did not run, while the flows it serves drain.
func (a *Agent) drainGateway() {
	if g := a.gw.Load(); g != nil {
		(*g).Drain()
	}
}

// stopGateway removes everything gateway mode added.
func (a *Agent) stopGateway() {
	g := a.gw.Swap(nil)
	if g == nil {
		return
	}
	if err := (*g).Close(); err != nil {
		a.log.Warn("remove gateway mode", "err", err)
	}
}

var _ intercept.Handler = (*proxy.Server)(nil)
