package agent

import (
	"net"
	"net/netip"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// DefaultDenyDestinations is server.denyDestinations when not set:
// "this network", loopback, link-local (cloud metadata at 169.254.169.254
// on AWS, GCP, Azure, OpenStack, Oracle; ECS at 169.254.170.2), Alibaba's
// and Azure's other metadata addresses, AWS's IPv6 metadata address, and
// the names that mean this host or GCP's metadata server.
func DefaultDenyDestinations() []string {
	return []string{
		"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "100.100.100.200", "168.63.129.16",
		"::/128", "::1/128", "fe80::/10", "fd00:ec2::254",
		"localhost", "metadata.google.internal",
	}
}

// parseDestinations reads a deny or allow list: CIDRs, IPs (IPv4-mapped
// IPv6 taken as IPv4) and host names, reporting each bad entry under
// server.<field>.
func parseDestinations(p *problems, field string, list []string) (prefixes []netip.Prefix, names []string) {
	for i, e := range list {
		e = strings.TrimSpace(e)
		if strings.Contains(e, "%") {
			p.add("server: %s[%d]: %q: an IPv6 zone is not allowed", field, i, e)
			continue
		}
		if pf, err := netip.ParsePrefix(e); err == nil {
			if pf.Addr().Is4In6() && pf.Bits() >= 96 {
				pf = netip.PrefixFrom(pf.Addr().Unmap(), pf.Bits()-96)
			}
			prefixes = append(prefixes, pf.Masked())
			continue
		}
		if a, ok := proxy.ParseHostIP(strings.Trim(e, "[]")); ok {
			prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		name := strings.TrimSuffix(strings.ToLower(e), ".")
		if name == "" || checkHost(name) != nil || strings.HasPrefix(name, ".") {
			p.add("server: %s[%d]: %q is not a CIDR, an IP address or a host name", field, i, e)
			continue
		}
		names = append(names, name)
	}
	return prefixes, names
}

// destinationPolicy is the proxy's policy for cfg: its deny and allow
// lists, and the agent's own listening ports on every local address. The
// lists were validated by Resolve.
func (c *Config) destinationPolicy(ln net.Listener) *proxy.DestinationPolicy {
	var p problems
	dp := &proxy.DestinationPolicy{}
	dp.Deny, dp.DenyNames = parseDestinations(&p, "denyDestinations", c.Server.DenyDestinations)
	dp.Allow, dp.AllowNames = parseDestinations(&p, "allowDestinations", c.Server.AllowDestinations)
	s := c.Server
	ports := []int{s.Port, c.Transparent.Local.Port, c.Transparent.Gateway.Port}
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
