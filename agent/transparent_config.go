package agent

// TransparentConfig is the `transparent:` block: traffic steered to the
// agent by the eBPF data plane, with no client configuration.
type TransparentConfig struct {
	// Unmatched is what happens to a transparent connection no target
	// matches: "reject" (reset, the default) or "direct".
	Unmatched string                 `mapstructure:"unmatched"`
	Local     LocalTransparentConfig `mapstructure:"local"`
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
}
