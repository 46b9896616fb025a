package agent

import (
	"net"
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/intercept/gateway"
	"github.com/proxy-hopper/proxy-hopper/intercept/local"
)

// The interception modes' options, from the config in force: the one place
// where the agent turns the transparent: block into typed values (once the
// config resolves them itself, this file only copies them).

func (a *Agent) localOptions() local.Options {
	lc := a.cfg.Transparent.Local
	return local.Options{
		Port: uint16(lc.Port), Mark: uint32(lc.Mark), Ports: ports(lc.Ports),
		Include: prefixes(lc.IncludeCIDRs), Exclude: prefixes(lc.ExcludeCIDRs),
		Cgroups: lc.Cgroups, Sockmap: lc.sockmap(), Pinned: lc.Pinned, PinDir: lc.PinDir,
		Upstreams: a.upstreamPrefixes, Handler: a.srv, Logger: a.log.With("component", "transparent"),
	}
}

func (a *Agent) gatewayOptions() gateway.Options {
	gc := a.cfg.Transparent.Gateway
	return gateway.Options{
		Port: uint16(gc.Port), Mark: uint32(gc.Mark), Table: gc.Table, RulePriority: gc.RulePriority,
		Ports: ports(gc.Ports), Include: gatewayPrefixes(gc.IncludeCIDRs), Exclude: gatewayPrefixes(gc.ExcludeCIDRs),
		Sources: gatewayPrefixes(gc.SourceCIDRs), Interfaces: gc.Interfaces, Uplinks: gc.Uplinks,
		TCAttach:     gateway.TCMode(gc.TCAttach),
		MaxIPEntries: uint32(gc.MaxIPEntries), MaxClientEntries: uint32(gc.MaxClientEntries),
		Upstreams: a.upstreamPrefixes, Handler: a.srv, Logger: a.log.With("component", "gateway"),
	}
}

// transparentDialer marks the agent's own sockets when local transparent
// mode is on (nil: the proxy's default dialer).
func transparentDialer(cfg *Config) *net.Dialer {
	if !cfg.Transparent.Local.Enabled {
		return nil
	}
	return local.Dialer(uint32(cfg.Transparent.Local.Mark))
}

func ports(ps []int) []uint16 {
	var out []uint16
	for _, p := range ps {
		out = append(out, uint16(p))
	}
	return out
}

// prefixes parses CIDRs that validation accepted.
func prefixes(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := parseCIDR(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
