package config

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// AuthNotes are what `validate` tells about access besides its summary
// (which stays proxy-hopper's): with auth on, what a JWT without a role
// claim may reach (auth.defaultRole); and that /metrics is open when it
// has no token.
func (c *Config) AuthNotes() []string {
	var out []string
	a := &c.Auth
	switch {
	case !a.Enabled:
	case a.JWTSecret == "":
		out = append(out, "auth is on; JWTs are not accepted (no auth.jwtSecret)")
	default:
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
