package agent

import (
	"fmt"

	"github.com/proxy-hopper/proxy-hopper/identity"
)

// identityStore builds the per-IP identity store of a target, or nil when
// its identity block is off. onRotate (may be nil) sees every rotation.
func (c *Config) identityStore(target string, onRotate func(addr, reason string)) (*identity.Store, error) {
	cfg, on := c.identityConfig(target)
	if !on {
		return nil, nil
	}
	s, err := identity.NewStore(cfg, identity.Options{OnRotate: onRotate})
	if err != nil {
		return nil, fmt.Errorf("targets %s: identity: %w", target, err)
	}
	return s, nil
}

// identityConfig is the identity policy of a target, and whether it is on.
func (c *Config) identityConfig(target string) (identity.Config, bool) {
	var ic *IdentityConfig
	for i := range c.Targets {
		if c.Targets[i].Name == target {
			ic = &c.Targets[i].Identity
		}
	}
	if ic == nil || !ic.Enabled {
		return identity.Config{}, false
	}
	cfg := identity.DefaultConfig()
	cfg.Enabled = true
	if ic.Cookies != nil {
		cfg.Cookies = *ic.Cookies
	}
	if ic.RotateOn429 != nil {
		cfg.RotateOn429 = *ic.RotateOn429
	}
	cfg.RotateAfterRequests = ic.RotateAfterRequests
	cfg.Profile = ic.Profile
	cfg.PreserveClientHeaders = ic.PreserveClientHeaders
	if w := ic.Warmup; w != nil {
		cfg.Warmup = identity.Warmup{Enabled: w.Enabled == nil || *w.Enabled, Path: w.Path}
	}
	return cfg, true
}
