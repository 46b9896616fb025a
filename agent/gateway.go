package agent

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxy-hopper/proxy-hopper/metrics"
)

// runningGateway is gateway mode while it runs.
type runningGateway interface {
	metrics.CounterSource
	Drain()
	Close() error
}

// startGateway starts gateway mode when configured. A kernel without a
// needed feature (or any other setup failure) disables gateway mode with
// one error log; the rest of the agent runs on.
func (a *Agent) startGateway(ctx context.Context) {
	if !a.cfg.Transparent.Gateway.Enabled {
		return
	}
	g, err := a.startGatewayMode(ctx)
	if err != nil {
		a.log.Error("gateway mode disabled", "err", err)
		return
	}
	a.gw.Store(&g)
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

// gatewayCounters feeds the BPF collector (nothing while gateway mode is off).
func (a *Agent) gatewayCounters() ([]metrics.IPCounter, []metrics.ClientCounter, error) {
	g := a.gw.Load()
	if g == nil {
		return nil, nil, nil
	}
	return (*g).Counters()
}

// registerGatewayCollector adds the BPF counters collector to reg when
// gateway mode is configured.
func (a *Agent) registerGatewayCollector(reg prometheus.Registerer) error {
	if !a.cfg.Transparent.Gateway.Enabled {
		return nil
	}
	var once sync.Once
	var labels map[netip.Addr]metrics.UpstreamLabels
	return reg.Register(metrics.NewBPFCollector(metrics.CounterSourceFunc(a.gatewayCounters), func(ip netip.Addr) (metrics.UpstreamLabels, bool) {
		once.Do(func() { labels, _ = a.cfg.UpstreamLabels() })
		l, ok := labels[ip]
		return l, ok
	}))
}

// UpstreamLabels maps each upstream proxy IP (given as an address in the
// config) to its targets (comma-separated), provider and region.
func (cfg *Config) UpstreamLabels() (map[netip.Addr]metrics.UpstreamLabels, error) {
	targets, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]metrics.UpstreamLabels{}
	names := map[netip.Addr][]string{}
	for _, t := range targets {
		for _, ip := range t.IPs {
			host := ip.Host
			if h, _, err := net.SplitHostPort(ip.Addr()); err == nil {
				host = h
			}
			addr, err := netip.ParseAddr(strings.Trim(host, "[]"))
			if err != nil {
				continue // a host name: no label
			}
			addr = addr.Unmap()
			if !slices.Contains(names[addr], t.Name) {
				names[addr] = append(names[addr], t.Name)
			}
			l := out[addr]
			if l.Provider == "" {
				l.Provider = ip.Provider
			}
			if l.Region == "" {
				l.Region = ip.Region
			}
			out[addr] = l
		}
	}
	for addr, ns := range names {
		slices.Sort(ns)
		l := out[addr]
		l.Target = strings.Join(ns, ",")
		out[addr] = l
	}
	return out, nil
}
