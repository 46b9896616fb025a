package agent

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/metrics"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// gatewayCounters feeds the BPF collector (nothing while gateway mode is off).
func (a *Agent) gatewayCounters() ([]metrics.IPCounter, []metrics.ClientCounter, error) {
	g := a.gw.Load()
	if g == nil {
		return nil, nil, nil
	}
	return (*g).Counters()
}

// registerGatewayCollector adds the BPF counters collector to reg when
// gateway mode is configured. Upstream labels follow the routing table in
// force, so they change with a reload.
func (a *Agent) registerGatewayCollector(reg prometheus.Registerer) error {
	if !a.cfg.Transparent.Gateway.Enabled {
		return nil
	}
	var mu sync.Mutex
	var table *[]*proxy.Target
	var labels map[netip.Addr]metrics.UpstreamLabels
	return reg.Register(metrics.NewBPFCollector(metrics.CounterSourceFunc(a.gatewayCounters), func(ip netip.Addr) (metrics.UpstreamLabels, bool) {
		mu.Lock()
		defer mu.Unlock()
		if live := a.live.Load(); live != table {
			table = live
			var ips []labelledIP
			if live != nil {
				for _, t := range *live {
					for addr, up := range t.Upstreams {
						ips = append(ips, labelledIP{target: t.Name, addr: addr, provider: up.Provider, region: up.Region})
					}
				}
			}
			labels = upstreamLabels(ips)
		}
		l, ok := labels[ip]
		return l, ok
	}))
}

// UpstreamLabels maps each upstream proxy IP (given as an address in the
// config) to its targets (comma-separated), provider and region.
func UpstreamLabels(res *config.Resolved) map[netip.Addr]metrics.UpstreamLabels {
	var ips []labelledIP
	for _, t := range res.Targets {
		for _, ip := range t.IPs {
			ips = append(ips, labelledIP{target: t.Name, addr: ip.Addr(), provider: ip.Provider, region: ip.Region})
		}
	}
	return upstreamLabels(ips)
}

// labelledIP is one pool address of a target, with its provider and region.
type labelledIP struct{ target, addr, provider, region string }

// upstreamLabels maps each IP among ips (host names are left out) to the
// targets using it (sorted, comma-separated) and its provider and region.
func upstreamLabels(ips []labelledIP) map[netip.Addr]metrics.UpstreamLabels {
	out := map[netip.Addr]metrics.UpstreamLabels{}
	names := map[netip.Addr][]string{}
	for _, ip := range ips {
		host := ip.addr
		if h, _, err := net.SplitHostPort(ip.addr); err == nil {
			host = h
		}
		addr, err := netip.ParseAddr(strings.Trim(host, "[]"))
		if err != nil {
			continue // a host name: no label
		}
		addr = addr.Unmap()
		if !slices.Contains(names[addr], ip.target) {
			names[addr] = append(names[addr], ip.target)
		}
		l := out[addr]
		if l.Provider == "" {
			l.Provider = ip.provider
		}
		if l.Region == "" {
			l.Region = ip.region
		}
		out[addr] = l
	}
	for addr, ns := range names {
		slices.Sort(ns)
		l := out[addr]
		l.Target = strings.Join(ns, ",")
		out[addr] = l
	}
	return out
}
