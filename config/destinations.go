package config

import (
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

// Destinations are server.denyDestinations and server.allowDestinations
// resolved: prefixes (IPv4-mapped IPv6 taken as IPv4) and lower-case host
// names without the trailing dot.
type Destinations struct {
	Deny, Allow           []netip.Prefix
	DenyNames, AllowNames []string
}
