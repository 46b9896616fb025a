package agent

import (
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/bpf"
)

// DefaultPinDir is transparent.local.pinDir when not set.
const DefaultPinDir = bpf.PinDir

// DefaultTransparentMark is the SO_MARK of the agent's own sockets when
// transparent.local.mark is not set.
const DefaultTransparentMark = 0x5048

// sockmapDefault is transparent.local.sockmap when unset: the fast path
// measured faster than the loopback stack (see BENCHMARKS.md).
const sockmapDefault = true

// checkTransparent validates the transparent: block and fills its defaults.
func (c *Config) checkTransparent(p *problems) {
	t := &c.Transparent
	switch strings.ToLower(t.Unmatched) {
	case "":
		t.Unmatched = "reject"
	case "reject", "direct":
		t.Unmatched = strings.ToLower(t.Unmatched)
	default:
		p.add("transparent: unmatched: %q is not a policy (want reject or direct)", t.Unmatched)
	}
	l := &t.Local
	if l.Mark == 0 {
		l.Mark = DefaultTransparentMark
	}
	if l.Mark < 0 || l.Mark > 0xffffffff {
		p.add("transparent.local: mark: %d is not a 32-bit mark", l.Mark)
	}
	if l.PinDir == "" {
		l.PinDir = DefaultPinDir
	}
	if !filepath.IsAbs(l.PinDir) || filepath.Clean(l.PinDir) != l.PinDir || filepath.Dir(l.PinDir) == l.PinDir {
		p.add("transparent.local: pinDir: %q must be a clean absolute path on bpffs, such as %s", l.PinDir, DefaultPinDir)
	}
	if l.Port != 0 {
		checkPort(p, "transparent.local", "port", l.Port)
	}
	for i, port := range l.Ports {
		if port < 1 || port > 65535 {
			p.add("transparent.local: ports[%d]: must be a port from 1 to 65535, got %d", i, port)
		}
	}
	for _, f := range []struct {
		name  string
		cidrs []string
	}{{"includeCidrs", l.IncludeCIDRs}, {"excludeCidrs", l.ExcludeCIDRs}} {
		for i, s := range f.cidrs {
			if _, err := parseCIDR(s); err != nil {
				p.add("transparent.local: %s[%d]: %q is not an IP address or CIDR", f.name, i, s)
			}
		}
	}
	if l.Enabled && len(l.Cgroups) == 0 {
		p.add("transparent.local: cgroups: at least one cgroup is needed when enabled")
	}
	for i, cg := range l.Cgroups {
		if strings.TrimSpace(cg) == "" || strings.Contains(cg, "..") {
			p.add("transparent.local: cgroups[%d]: %q is not a cgroup path", i, cg)
		}
	}
}

// sockmap reports whether the sk_msg fast path is on.
func (l *LocalTransparentConfig) sockmap() bool {
	if l.Sockmap == nil {
		return sockmapDefault
	}
	return *l.Sockmap
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
