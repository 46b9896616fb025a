package config

import (
	"fmt"
	"net/url"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

var permissions = map[string]bool{"read": true, "write": true, "admin": true}

func (c *Config) checkAuth(p *problems) {
	a := &c.Auth
	if a.JWTExpiryMinutes < 1 {
		p.add("auth: jwtExpiryMinutes must be at least 1, got %d", a.JWTExpiryMinutes)
	}
	if a.JWTMaxLifetime < Duration(time.Minute) {
		p.add("auth: jwtMaxLifetime must be at least 1m, got %s", time.Duration(a.JWTMaxLifetime))
	}
	if _, builtin := auth.BuiltinRole(a.DefaultRole); !builtin && a.DefaultRole != "none" {
		if _, custom := a.Roles[a.DefaultRole]; !custom {
			p.add("auth: defaultRole: %q is not a role (want admin, operator, viewer, a role of auth.roles, or none)", a.DefaultRole)
		}
	}
	for i, k := range a.APIKeys {
		label := fmt.Sprintf("auth: apiKeys[%d]", i)
		if k.Name != "" {
			label += " (" + k.Name + ")"
		}
		if k.Name == "" {
			p.add("%s: name is required", label)
		}
		switch {
		case k.Key == "" && k.KeyHash == "":
			p.add("%s: key is required (or keyHash)", label)
		case k.Key != "" && k.KeyHash != "":
			p.add("%s: set key or keyHash, not both", label)
		}
	}
	for _, name := range sortedKeys(anyMap(a.Roles)) {
		for _, perm := range a.Roles[name].Permissions {
			if !permissions[perm] {
				p.add("auth: roles.%s.permissions: %q is not a permission (want read, write or admin)", name, perm)
			}
		}
	}
	if a.Admin != nil {
		if a.Admin.Username == "" {
			p.add("auth: admin.username is required")
		}
		switch {
		case a.Admin.PasswordHash == "":
			p.add("auth: admin.passwordHash is required (proxy-hopper hash-password, or PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH)")
		case auth.CheckPasswordHash(a.Admin.PasswordHash) != nil:
			// Never echo the value: it may be a password pasted by mistake.
			p.add("auth: admin.passwordHash is not a bcrypt hash: replace it with the output of `proxy-hopper hash-password` (or set PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH)")
		}
		if a.Admin.Role != "" && !a.isRole(a.Admin.Role) {
			p.add("auth: admin.role: %q is not a role (want admin, operator, viewer or a role of auth.roles)", a.Admin.Role)
		}
	}
	if a.OIDC != nil {
		switch u, err := url.Parse(a.OIDC.Issuer); {
		case a.OIDC.Issuer == "":
			p.add("auth: oidc.issuer is required")
		case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
			p.add("auth: oidc.issuer: %q is not an http(s) URL", a.OIDC.Issuer)
		}
	}
	if time.Duration(a.JWTExpiryMinutes)*time.Minute > time.Duration(a.JWTMaxLifetime) && a.Admin != nil && a.JWTExpiryMinutes >= 1 {
		p.add("auth: jwtExpiryMinutes (%d) is longer than jwtMaxLifetime (%s): the JWTs POST /auth/login issues would be refused; lower jwtExpiryMinutes or raise jwtMaxLifetime",
			a.JWTExpiryMinutes, time.Duration(a.JWTMaxLifetime))
	}
}

// isRole reports whether name is a built-in role or one of auth.roles.
func (a *AuthConfig) isRole(name string) bool {
	if _, ok := auth.BuiltinRole(name); ok {
		return true
	}
	_, ok := a.Roles[name]
	return ok
}

func anyMap[V any](m map[string]V) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// resolveAuth validates auth.transparent.allowCidrs and returns the auth
// block as the authenticator takes it.
func (c *Config) resolveAuth(p *problems) auth.Config {
	a := c.Auth
	cfg := auth.Config{Enabled: a.Enabled, JWTSecret: a.JWTSecret, Roles: map[string]auth.Role{},
		JWTIssuer: a.JWTIssuer, JWTAudience: a.JWTAudience, JWTMaxLifetime: time.Duration(a.JWTMaxLifetime), DefaultRole: a.DefaultRole}
	for _, k := range a.APIKeys {
		cfg.APIKeys = append(cfg.APIKeys, auth.APIKey{Name: k.Name, Key: k.Key, KeyHash: k.KeyHash, Targets: k.Targets})
	}
	for name, r := range a.Roles {
		cfg.Roles[name] = auth.Role{Permissions: r.Permissions, Targets: r.Targets}
	}
	cfg.JWTExpiry = time.Duration(a.JWTExpiryMinutes) * time.Minute
	if a.Admin != nil {
		cfg.Admins = []auth.AdminUser{{Username: a.Admin.Username, PasswordHash: a.Admin.PasswordHash, Role: a.Admin.Role}}
	}
	if a.OIDC != nil {
		cfg.OIDC = &auth.OIDC{Issuer: a.OIDC.Issuer, Audience: a.OIDC.Audience, RolesClaim: a.OIDC.RolesClaim}
	}
	for i, r := range a.Transparent.AllowCIDRs {
		pfx, err := parseCIDR(r.CIDR)
		if err != nil {
			p.add("auth.transparent.allowCidrs[%d]: cidr %q: %v", i, r.CIDR, err)
			continue
		}
		cfg.Sources = append(cfg.Sources, auth.SourceRule{Prefix: pfx, Targets: r.Targets})
	}
	return cfg
}
