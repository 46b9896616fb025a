package config

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// AuthNotes are what `validate` tells about access besides its summary
// (which stays proxy-hopper's): with auth on, which tokens are accepted,
// what a JWT without a role claim may reach (auth.defaultRole), how the
// admin API is guarded; and that /metrics is open when it has no token.
func (c *Config) AuthNotes() []string {
	var out []string
	a := &c.Auth
	jwts := a.JWTSecret != "" || a.Admin != nil || a.OIDC != nil
	switch {
	case !a.Enabled:
	case !jwts:
		out = append(out, "auth is on; JWTs are not accepted (no auth.jwtSecret, auth.admin or auth.oidc)")
	default:
		if a.JWTSecret == "" && a.Admin != nil {
			out = append(out, "auth.jwtSecret is not set: the JWTs POST /auth/login issues are signed with a secret made at start-up, so they stop working when the agent restarts (as proxy-hopper)")
		}
		if a.OIDC != nil && a.OIDC.Audience == "" {
			out = append(out, "auth.oidc.audience is not set: an OIDC token that carries an aud claim (most issuers set one) is refused, as proxy-hopper does; set it to the client ID")
		}
		var r auth.Role
		if custom, ok := a.Roles[a.DefaultRole]; ok {
			r = auth.Role{Permissions: custom.Permissions, Targets: custom.Targets}
		} else {
			r, _ = auth.BuiltinRole(a.DefaultRole) // none: no permissions
		}
		reach := "no target"
		switch {
		case !slices.Contains(r.Permissions, "read") || len(r.Targets) == 0:
		case slices.Contains(r.Targets, "*"):
			reach = "every target"
		default:
			reach = "targets " + strings.Join(r.Targets, ", ")
		}
		out = append(out, fmt.Sprintf("a JWT without a role claim gets role %s (auth.defaultRole): %s", pyRepr(a.DefaultRole), reach))
	}
	if s := &c.Server; s.Admin {
		addr := net.JoinHostPort(s.AdminHost, fmt.Sprint(s.AdminPort))
		switch {
		case a.Enabled && s.AdminToken != "":
			out = append(out, fmt.Sprintf("admin API on %s: server.adminToken, or a JWT whose role has read (to look) or write (to change)", addr))
		case a.Enabled:
			out = append(out, fmt.Sprintf("admin API on %s: a JWT whose role has read (to look) or write (to change); API keys are for the proxy only", addr))
		case s.AdminToken == "":
			out = append(out, fmt.Sprintf("admin API on %s is open to read for whoever reaches it, and refuses changes: set server.adminToken or turn auth on (proxy-hopper let anyone change it)", addr))
		}
	}
	if s := &c.Server; s.Metrics && s.MetricsToken == "" {
		host := s.MetricsHost
		if host == "" {
			host = s.Host
		}
		out = append(out, fmt.Sprintf("/metrics on %s has no server.metricsToken: whoever reaches it sees target names and upstream addresses",
			net.JoinHostPort(host, fmt.Sprint(s.MetricsPort))))
	}
	return out
}
