// Package gateway is gateway mode: on a host that routes a LAN, TC
// programs on the LAN interfaces assign selected forwarded TCP flows to an
// IP_TRANSPARENT listener (with a policy rule and a local route that make
// the kernel deliver them), and programs on the uplinks count traffic per
// IP. Start sets it up from typed Options, Mode.Drain stops taking new
// flows and Mode.Close removes everything it added. The netlink side
// (policy routing, clsact qdiscs and filters, leftovers of a crashed agent)
// lives here too; package bpf holds the programs and their maps.
package gateway

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/intercept"
)

// TCMode is how programs are attached to interfaces.
type TCMode string

// TC attach modes.
const (
	TCAuto   TCMode = "auto"   // TCX when the kernel has it, else clsact
	TCX      TCMode = "tcx"    // BPF links (kernel ≥ 6.6); gone with the process
	TCClsact TCMode = "clsact" // a clsact qdisc and bpf filters through netlink
)

// Options are gateway mode's settings, already parsed.
type Options struct {
	// Port of the IP_TRANSPARENT listeners on 127.0.0.1 and ::1 (0: any).
	Port uint16
	// Mark, Table and RulePriority are the policy routing added:
	// `ip rule add fwmark Mark lookup Table priority RulePriority` and
	// `ip route add local 0.0.0.0/0 dev lo table Table` (and for IPv6).
	Mark         uint32
	Table        int
	RulePriority int
	// Ports are the destination ports intercepted; empty means all.
	Ports []uint16
	// Include, when not empty, limits interception to these destinations;
	// Exclude are never intercepted (Exclude wins); Sources, when not
	// empty, limits it to these clients. The host's own addresses and the
	// upstream proxies are always excluded.
	Include, Exclude, Sources []netip.Prefix
	// Interfaces face the LAN (their ingress is intercepted); Uplinks face
	// the internet (their traffic is counted per IP).
	Interfaces, Uplinks []string
	TCAttach            TCMode
	// MaxIPEntries and MaxClientEntries size the counter maps (0: 16384).
	MaxIPEntries, MaxClientEntries uint32
	// Upstreams returns the upstream proxies' prefixes, never intercepted.
	// Start calls it once; ExcludeUpstreams replaces them later.
	Upstreams func(context.Context) []netip.Prefix
	// Handler serves each intercepted connection.
	Handler intercept.Handler
	Logger  *slog.Logger
}
