package agent

import (
	"net"
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// destinationPolicy is the proxy's policy for res: its deny and allow
// lists, and the agent's own listening ports on every local address.
func destinationPolicy(res *config.Resolved, ln net.Listener) *proxy.DestinationPolicy {
	d := res.Destinations
	dp := &proxy.DestinationPolicy{Deny: d.Deny, DenyNames: d.DenyNames, Allow: d.Allow, AllowNames: d.AllowNames}
	s := res.Config.Server
	ports := []int{s.Port, int(res.Transparent.Local.Port), int(res.Transparent.Gateway.Port)}
	if ln != nil {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok {
			ports[0] = ta.Port
		}
	}
	if s.Admin {
		ports = append(ports, s.AdminPort)
	}
	if s.Metrics {
		ports = append(ports, s.MetricsPort)
	}
	for _, pt := range ports {
		if pt > 0 && pt < 65536 {
			dp.OwnPorts = append(dp.OwnPorts, uint16(pt))
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if in, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(in.IP); ok {
					dp.Local = append(dp.Local, ip.Unmap())
				}
			}
		}
	}
	return dp
}
