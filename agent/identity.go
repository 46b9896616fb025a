package agent

import (
	"fmt"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/identity"
)

// identityStore builds the per-IP identity store of a target, or nil when
// its identity block is off. onRotate (may be nil) sees every rotation.
func identityStore(rt config.ResolvedTarget, onRotate func(addr, reason string)) (*identity.Store, error) {
	if !rt.Identity.Enabled {
		return nil, nil
	}
	s, err := identity.NewStore(rt.Identity, identity.Options{OnRotate: onRotate})
	if err != nil {
		return nil, fmt.Errorf("targets %s: identity: %w", rt.Name, err)
	}
	return s, nil
}
