package agent

import (
	"strings"
	"unicode"
)

// minAdminToken is the shortest server.adminToken accepted: the token
// guards quarantine and IP changes, so a guessable one is refused.
const minAdminToken = 16

// checkAdmin validates the admin API settings. server.admin turns it on
// (server.adminPort alone does not: it always has a value, 8081 by
// default); server.adminToken is then required.
func (c *Config) checkAdmin(p *problems) {
	s := &c.Server
	if !s.Admin {
		return
	}
	switch {
	case s.AdminToken == "":
		p.add("server: adminToken is required when admin is on (set server.adminToken or %s)", EnvName("adminToken"))
	case len(s.AdminToken) < minAdminToken:
		p.add("server: adminToken must be at least %d characters, got %d", minAdminToken, len(s.AdminToken))
	case strings.ContainsFunc(s.AdminToken, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		p.add("server: adminToken must not contain spaces or control characters")
	}
	if strings.TrimSpace(s.AdminHost) == "" {
		p.add("server: adminHost must not be empty when admin is on")
	}
}
