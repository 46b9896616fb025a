package agent

import (
	"net"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/intercept/gateway"
	"github.com/proxy-hopper/proxy-hopper/intercept/local"
)

// The interception modes' options: the resolved transparent: block
// (config parsed it), plus what the agent provides at run time (the
// proxy handling redirected connections, the upstream addresses to
// exclude, the logger).

func (a *Agent) localOptions() local.Options {
	lc := a.res.Transparent.Local
	return local.Options{
		Port: lc.Port, Mark: lc.Mark, Ports: lc.Ports,
		Include: lc.Include, Exclude: lc.Exclude,
		Cgroups: lc.Cgroups, Sockmap: lc.Sockmap, Pinned: lc.Pinned, PinDir: lc.PinDir,
		Upstreams: a.upstreamPrefixes, Handler: a.srv, Logger: a.log.With("component", "transparent"),
	}
}

func (a *Agent) gatewayOptions() gateway.Options {
	gc := a.res.Transparent.Gateway
	return gateway.Options{
		Port: gc.Port, Mark: gc.Mark, Table: int(gc.Table), RulePriority: gc.RulePriority,
		Ports: gc.Ports, Include: gc.Include, Exclude: gc.Exclude,
		Sources: gc.Sources, Interfaces: gc.Interfaces, Uplinks: gc.Uplinks,
		TCAttach:     gateway.TCMode(gc.TCAttach),
		MaxIPEntries: gc.MaxIPEntries, MaxClientEntries: gc.MaxClientEntries,
		Upstreams: a.upstreamPrefixes, Handler: a.srv, Logger: a.log.With("component", "gateway"),
	}
}

// transparentDialer marks the agent's own sockets when local transparent
// mode is on (nil: the proxy's default dialer).
func transparentDialer(res *config.Resolved) *net.Dialer {
	if !res.Transparent.Local.Enabled {
		return nil
	}
	return local.Dialer(res.Transparent.Local.Mark)
}
