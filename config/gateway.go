package config

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

// GatewayOptions are transparent.gateway resolved: what gateway mode's
// start-up takes as it is.
type GatewayOptions struct {
	Enabled          bool
	Interfaces       []string // LAN-facing, validated names
	Uplinks          []string
	Ports            []uint16       // destination ports intercepted (none: all)
	Include          []netip.Prefix // destinations intercepted (none: all), masked
	Exclude          []netip.Prefix // destinations never intercepted, masked
	Sources          []netip.Prefix // LAN clients intercepted (none: all), masked
	Port             uint16         // of the IP_TRANSPARENT listeners (0: any free port)
	Mark             uint32
	Table            uint32
	RulePriority     int    // 1 to 32765
	TCAttach         string // auto, tcx or clsact
	MaxIPEntries     uint32
	MaxClientEntries uint32
}

// setDefaults fills in transparent.gateway's defaults.
func (g *GatewayConfig) setDefaults() {
	if g.Mark == 0 {
		g.Mark = DefaultGatewayMark
	}
	if g.Table == 0 {
		g.Table = DefaultGatewayTable
	}
	if g.RulePriority == 0 {
		g.RulePriority = DefaultGatewayPriority
	}
	if g.TCAttach == "" {
		g.TCAttach = "auto"
	}
	if g.MaxIPEntries == 0 {
		g.MaxIPEntries = DefaultGatewayEntries
	}
	if g.MaxClientEntries == 0 {
		g.MaxClientEntries = DefaultGatewayEntries
	}
}

// checkGateway validates transparent.gateway and resolves it.
func (c *Config) checkGateway(p *problems) GatewayOptions {
	g := &c.Transparent.Gateway
	g.setDefaults()
	const label = "transparent.gateway"
	o := GatewayOptions{Enabled: g.Enabled, Interfaces: g.Interfaces, Uplinks: g.Uplinks, RulePriority: g.RulePriority}
	o.Mark = checkMark(p, label, g.Mark)
	if c.Transparent.Local.Enabled && g.Enabled && g.Mark == c.Transparent.Local.Mark {
		p.add("%s: mark: %#x is also transparent.local.mark (the agent's own sockets): they must differ", label, g.Mark)
	}
	if g.Table < 1 || g.Table > 0xffffffff || g.Table == 253 || g.Table == 254 || g.Table == 255 {
		p.add("%s: table: %d is not a free routing table (want 1-4294967295, not 253/254/255)", label, g.Table)
	} else {
		o.Table = uint32(g.Table)
	}
	if g.RulePriority < 1 || g.RulePriority >= 32766 {
		p.add("%s: rulePriority: %d must be from 1 to 32765 (before the main table)", label, g.RulePriority)
	}
	switch strings.ToLower(g.TCAttach) {
	case "auto", "tcx", "clsact":
		g.TCAttach = strings.ToLower(g.TCAttach)
		o.TCAttach = g.TCAttach
	default:
		p.add("%s: tcAttach: %q is not a mode (want auto, tcx or clsact)", label, g.TCAttach)
	}
	for _, f := range []struct {
		name string
		v    int
		out  *uint32
	}{{"maxIpEntries", g.MaxIPEntries, &o.MaxIPEntries}, {"maxClientEntries", g.MaxClientEntries, &o.MaxClientEntries}} {
		if f.v < 1 || f.v > maxGatewayEntries {
			p.add("%s: %s: %d must be from 1 to %d", label, f.name, f.v, maxGatewayEntries)
			continue
		}
		*f.out = uint32(f.v)
	}
	o.Port = checkListenPort(p, label, g.Port)
	o.Ports = checkPorts(p, label, g.Ports)
	o.Include = checkCIDRs(p, label, "includeCidrs", g.IncludeCIDRs)
	o.Exclude = checkCIDRs(p, label, "excludeCidrs", g.ExcludeCIDRs)
	o.Sources = checkCIDRs(p, label, "sourceCidrs", g.SourceCIDRs)
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
	return o
}
