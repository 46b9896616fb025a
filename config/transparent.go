package config

import (
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/bpf"
)

// TransparentConfig is the `transparent:` block: traffic steered to the
// agent by the eBPF data plane, with no client configuration.
type TransparentConfig struct {
	// Unmatched is what happens to a transparent connection no target
	// matches: "reject" (reset, the default) or "direct".
	Unmatched string                 `mapstructure:"unmatched"`
	Local     LocalTransparentConfig `mapstructure:"local"`
	Gateway   GatewayConfig          `mapstructure:"gateway"`
}

// LocalTransparentConfig selects local processes (by cgroup) whose
// outbound TCP connects are redirected to the agent.
type LocalTransparentConfig struct {
	Enabled      bool     `mapstructure:"enabled"`
	Cgroups      []string `mapstructure:"cgroups"`
	Ports        []int    `mapstructure:"ports"`
	IncludeCIDRs []string `mapstructure:"includeCidrs"`
	ExcludeCIDRs []string `mapstructure:"excludeCidrs"`
	Sockmap      *bool    `mapstructure:"sockmap"`
	// Port of the transparent listener on 127.0.0.1 and ::1 (0: any free port).
	Port int `mapstructure:"port"`
	// Mark is the SO_MARK the agent puts on its own outgoing sockets so
	// that the connect hooks never redirect them (default 0x5048).
	Mark int `mapstructure:"mark"`
	// Pinned keeps the redirect on bpffs across agent restarts (fail-closed
	// while no agent runs); the default is unpinned (fail-open).
	Pinned bool `mapstructure:"pinned"`
	// PinDir is where pinned mode keeps its state (default
	// /sys/fs/bpf/proxy-hopper; must be on bpffs).
	PinDir string `mapstructure:"pinDir"`
}

// TransparentOptions are the transparent: block resolved.
type TransparentOptions struct {
	// Unmatched is "reject" or "direct" (lower case).
	Unmatched string
	Local     LocalOptions
	Gateway   GatewayOptions
}

// LocalOptions are transparent.local resolved: what local transparent
// mode's start-up takes as it is.
type LocalOptions struct {
	Enabled bool
	Cgroups []string       // as configured; the mode resolves them on cgroup2
	Ports   []uint16       // destination ports redirected (none: all)
	Include []netip.Prefix // destinations redirected (none: all)
	Exclude []netip.Prefix // destinations never redirected
	Sockmap bool           // the sk_msg fast path
	Port    uint16         // of the listener on 127.0.0.1 and ::1 (0: any free port)
	Mark    uint32         // SO_MARK of the agent's own sockets
	Pinned  bool
	PinDir  string // clean absolute path on bpffs
}

// sockmapDefault is transparent.local.sockmap when unset: the fast path
// measured faster than the loopback stack (see BENCHMARKS.md).
const sockmapDefault = true

// DefaultPinDir is transparent.local.pinDir when not set.
const DefaultPinDir = bpf.PinDir

// DefaultTransparentMark is the SO_MARK of the agent's own sockets when
// transparent.local.mark is not set.
const DefaultTransparentMark = 0x5048

// setDefaults fills in the transparent: block's defaults.
func (t *TransparentConfig) setDefaults() {
	if t.Unmatched == "" {
		t.Unmatched = "reject"
	}
	l := &t.Local
	if l.Mark == 0 {
		l.Mark = DefaultTransparentMark
	}
	if l.PinDir == "" {
		l.PinDir = DefaultPinDir
	}
	t.Gateway.setDefaults()
}
