// Package local is local transparent mode: cgroup connect4/6 programs
// steer the outbound TCP connects of selected cgroups to a loopback
// listener, a sockops program records each connection's original
// destination, and an optional sk_msg fast path carries the bytes between
// the two loopback ends. Start sets it up from typed Options, Mode.Stop
// detaches it and Mode.Close releases it.
package local

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/intercept"
)

// Options are local transparent mode's settings, already parsed.
type Options struct {
	// Port of the listener on 127.0.0.1 and ::1 (0: any free port).
	Port uint16
	// Mark is the SO_MARK of the agent's own sockets: never redirected.
	Mark uint32
	// Ports are the destination ports redirected; empty means all.
	Ports []uint16
	// Include, when not empty, limits the redirect to these destinations;
	// Exclude are never redirected (Exclude wins).
	Include, Exclude []netip.Prefix
	// Cgroups are the cgroup2 directories whose connects are redirected:
	// absolute paths inside the cgroup2 mount, or paths relative to it.
	Cgroups []string
	// Sockmap turns the sk_msg fast path on (when the kernel has it and
	// the agent runs in a cgroup of its own).
	Sockmap bool
	// Pinned keeps the redirect on bpffs under PinDir across restarts.
	Pinned bool
	PinDir string
	// Upstreams returns the upstream proxies' prefixes, never redirected.
	// Start calls it once; ExcludeUpstreams replaces them later.
	Upstreams func(context.Context) []netip.Prefix
	// Handler serves each redirected connection.
	Handler intercept.Handler
	Logger  *slog.Logger
}
