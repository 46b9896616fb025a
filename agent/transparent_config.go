package agent

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
