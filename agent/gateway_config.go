package agent

import (
	"net/netip"
	"strings"
)

// GatewayConfig is transparent.gateway: TCP flows forwarded through this
// host from LAN clients (the host is their router) are handed to the agent
// by a TC program with bpf_sk_assign, and BPF maps count traffic per IP.
type GatewayConfig struct {
	Enabled bool `mapstructure:"enabled"`
	// Interfaces are the LAN-facing interfaces whose ingress is intercepted
	// (and whose clients are counted).
	Interfaces []string `mapstructure:"interfaces"`
	// Uplinks are the interfaces towards the internet (and the upstream
	// proxies), where packets and bytes are counted per remote IP.
	Uplinks      []string `mapstructure:"uplinks"`
	Ports        []int    `mapstructure:"ports"`
	IncludeCIDRs []string `mapstructure:"includeCidrs"`
	ExcludeCIDRs []string `mapstructure:"excludeCidrs"`
	// SourceCIDRs select the LAN clients whose flows are intercepted
	// (empty: every client); the others are routed as usual.
	SourceCIDRs []string `mapstructure:"sourceCidrs"`
	// Port of the IP_TRANSPARENT listeners on 127.0.0.1 and ::1 (0: any free port).
	Port int `mapstructure:"port"`
	// Mark, Table and RulePriority are the policy routing the agent adds:
	// `ip rule add fwmark Mark lookup Table priority RulePriority` and
	// `ip route add local 0.0.0.0/0 dev lo table Table` (and for IPv6).
	Mark         int `mapstructure:"mark"`
	Table        int `mapstructure:"table"`
	RulePriority int `mapstructure:"rulePriority"`
	// TCAttach is how programs are attached: auto (TCX when the kernel
	// has it, else clsact), tcx or clsact.
	TCAttach string `mapstructure:"tcAttach"`
	// MaxIPEntries and MaxClientEntries size the LRU counter maps.
	MaxIPEntries     int `mapstructure:"maxIpEntries"`
	MaxClientEntries int `mapstructure:"maxClientEntries"`
}

// Gateway defaults.
const (
	DefaultGatewayMark     = 0x5049
	DefaultGatewayTable    = 20552
	DefaultGatewayPriority = 20552
	DefaultGatewayEntries  = 16384
	maxGatewayEntries      = 1 << 22
)

// checkGateway validates transparent.gateway and fills its defaults.
func (c *Config) checkGateway(p *problems) {
	g := &c.Transparent.Gateway
	const label = "transparent.gateway"
	if g.Mark == 0 {
		g.Mark = DefaultGatewayMark
	}
	if g.Mark < 0 || g.Mark > 0xffffffff {
		p.add("%s: mark: %d is not a 32-bit mark", label, g.Mark)
	}
	if c.Transparent.Local.Enabled && g.Enabled && g.Mark == c.Transparent.Local.Mark {
		p.add("%s: mark: %#x is also transparent.local.mark (the agent's own sockets): they must differ", label, g.Mark)
	}
	if g.Table == 0 {
		g.Table = DefaultGatewayTable
	}
	if g.Table < 1 || g.Table > 0xffffffff || g.Table == 253 || g.Table == 254 || g.Table == 255 {
		p.add("%s: table: %d is not a free routing table (want 1-4294967295, not 253/254/255)", label, g.Table)
	}
	if g.RulePriority == 0 {
		g.RulePriority = DefaultGatewayPriority
	}
	if g.RulePriority < 1 || g.RulePriority >= 32766 {
		p.add("%s: rulePriority: %d must be from 1 to 32765 (before the main table)", label, g.RulePriority)
	}
	switch strings.ToLower(g.TCAttach) {
	case "":
		g.TCAttach = "auto"
	case "auto", "tcx", "clsact":
		g.TCAttach = strings.ToLower(g.TCAttach)
	default:
		p.add("%s: tcAttach: %q is not a mode (want auto, tcx or clsact)", label, g.TCAttach)
	}
	for _, f := range []struct {
		name string
		v    *int
	}{{"maxIpEntries", &g.MaxIPEntries}, {"maxClientEntries", &g.MaxClientEntries}} {
		if *f.v == 0 {
			*f.v = DefaultGatewayEntries
		}
		if *f.v < 1 || *f.v > maxGatewayEntries {
			p.add("%s: %s: %d must be from 1 to %d", label, f.name, *f.v, maxGatewayEntries)
		}
	}
	if g.Port != 0 {
		checkPort(p, label, "port", g.Port)
	}
	for i, port := range g.Ports {
		if port < 1 || port > 65535 {
			p.add("%s: ports[%d]: must be a port from 1 to 65535, got %d", label, i, port)
		}
	}
	for _, f := range []struct {
		name  string
		cidrs []string
	}{{"includeCidrs", g.IncludeCIDRs}, {"excludeCidrs", g.ExcludeCIDRs}, {"sourceCidrs", g.SourceCIDRs}} {
		for i, s := range f.cidrs {
			if _, err := parseCIDR(s); err != nil {
				p.add("%s: %s[%d]: %q is not an IP address or CIDR", label, f.name, i, s)
			}
		}
	}
	if g.Enabled && len(g.Interfaces) == 0 {
		p.add("%s: interfaces: at least one LAN interface is needed when enabled", label)
	}
	seen := map[string]string{}
	for _, f := range []struct {
		name string
		ifs  []string
	}{{"interfaces", g.Interfaces}, {"uplinks", g.Uplinks}} {
		for i, name := range f.ifs {
			if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t") {
				p.add("%s: %s[%d]: %q is not an interface name", label, f.name, i, name)
				continue
			}
			if prev, ok := seen[name]; ok {
				p.add("%s: %s[%d]: %q is already in %s", label, f.name, i, name, prev)
			}
			seen[name] = f.name
		}
	}
}

// gatewayPrefixes parses validated CIDRs.
func gatewayPrefixes(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := parseCIDR(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}
