package config

import (
	"net/netip"
	"path/filepath"
	"strings"
)

// checkUnmatched validates transparent.unmatched and returns it in lower
// case.
func (c *Config) checkUnmatched(p *problems) string {
	t := &c.Transparent
	t.setDefaults()
	switch strings.ToLower(t.Unmatched) {
	case "reject", "direct":
		t.Unmatched = strings.ToLower(t.Unmatched)
	default:
		p.add("transparent: unmatched: %q is not a policy (want reject or direct)", t.Unmatched)
	}
	return t.Unmatched
}

// checkTransparent validates transparent.local and resolves it.
func (c *Config) checkTransparent(p *problems) LocalOptions {
	c.Transparent.setDefaults()
	l := &c.Transparent.Local
	o := LocalOptions{Enabled: l.Enabled, Cgroups: l.Cgroups, Sockmap: sockmapDefault, Pinned: l.Pinned, PinDir: l.PinDir}
	if l.Sockmap != nil {
		o.Sockmap = *l.Sockmap
	}
	o.Mark = checkMark(p, "transparent.local", l.Mark)
	if !filepath.IsAbs(l.PinDir) || filepath.Clean(l.PinDir) != l.PinDir || filepath.Dir(l.PinDir) == l.PinDir {
		p.add("transparent.local: pinDir: %q must be a clean absolute path on bpffs, such as %s", l.PinDir, DefaultPinDir)
	}
	o.Port = checkListenPort(p, "transparent.local", l.Port)
	o.Ports = checkPorts(p, "transparent.local", l.Ports)
	o.Include = checkCIDRs(p, "transparent.local", "includeCidrs", l.IncludeCIDRs)
	o.Exclude = checkCIDRs(p, "transparent.local", "excludeCidrs", l.ExcludeCIDRs)
	if l.Enabled && len(l.Cgroups) == 0 {
		p.add("transparent.local: cgroups: at least one cgroup is needed when enabled")
	}
	for i, cg := range l.Cgroups {
		if strings.TrimSpace(cg) == "" || strings.Contains(cg, "..") {
			p.add("transparent.local: cgroups[%d]: %q is not a cgroup path", i, cg)
		}
	}
	return o
}

// checkMark validates a 32-bit packet mark.
func checkMark(p *problems, label string, mark int) uint32 {
	if mark < 0 || mark > 0xffffffff {
		p.add("%s: mark: %d is not a 32-bit mark", label, mark)
		return 0
	}
	return uint32(mark)
}

// checkListenPort validates the port of a transparent listener (0: any
// free port).
func checkListenPort(p *problems, label string, port int) uint16 {
	if port == 0 {
		return 0
	}
	if port < 1 || port > 65535 {
		checkPort(p, label, "port", port)
		return 0
	}
	return uint16(port)
}

// checkPorts validates a list of destination ports.
func checkPorts(p *problems, label string, ports []int) []uint16 {
	var out []uint16
	for i, port := range ports {
		if port < 1 || port > 65535 {
			p.add("%s: ports[%d]: must be a port from 1 to 65535, got %d", label, i, port)
			continue
		}
		out = append(out, uint16(port))
	}
	return out
}

// checkCIDRs parses a list of CIDRs or addresses, masked.
func checkCIDRs(p *problems, label, field string, cidrs []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range cidrs {
		pfx, err := parseCIDR(s)
		if err != nil {
			p.add("%s: %s[%d]: %q is not an IP address or CIDR", label, field, i, s)
			continue
		}
		out = append(out, pfx.Masked())
	}
	return out
}

// parseCIDR accepts "10.0.0.0/8" or a single address.
func parseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
