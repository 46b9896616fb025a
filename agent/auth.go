package agent

import (
	"fmt"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// checkAuthSources validates auth.transparent.allowCidrs.
func (c *Config) checkAuthSources(p *problems) {
	for i, r := range c.Auth.Transparent.AllowCIDRs {
		if _, err := parseCIDR(r.CIDR); err != nil { // parseCIDR: transparent_validate.go
			p.add("auth.transparent.allowCidrs[%d]: cidr %q: %v", i, r.CIDR, err)
		}
	}
}

// authenticator builds the boundary check from the auth block.
func (c *Config) authenticator() (*auth.Authenticator, error) {
	a := c.Auth
	cfg := auth.Config{Enabled: a.Enabled, JWTSecret: a.JWTSecret, Roles: map[string]auth.Role{},
		JWTIssuer: a.JWTIssuer, JWTAudience: a.JWTAudience, JWTMaxLifetime: time.Duration(a.JWTMaxLifetime), DefaultRole: a.DefaultRole}
	for _, k := range a.APIKeys {
		cfg.APIKeys = append(cfg.APIKeys, auth.APIKey{Name: k.Name, Key: k.Key, KeyHash: k.KeyHash, Targets: k.Targets})
	}
	for name, r := range a.Roles {
		cfg.Roles[name] = auth.Role{Permissions: r.Permissions, Targets: r.Targets}
	}
	for _, r := range a.Transparent.AllowCIDRs {
		pfx, err := parseCIDR(r.CIDR)
		if err != nil {
			return nil, fmt.Errorf("auth.transparent.allowCidrs: %q: %w", r.CIDR, err)
		}
		cfg.Sources = append(cfg.Sources, auth.SourceRule{Prefix: pfx, Targets: r.Targets})
	}
	return auth.New(cfg)
}
