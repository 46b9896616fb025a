package config

import (
	"fmt"
	"strings"
	"time"
	"unicode"
)

// A static token that guards the admin API or /metrics must be at least
// minTokenLen characters long, with at least minTokenDistinct different
// characters and no spaces or control characters: "aaaaaaaaaaaaaaaa" or
// "abababababababab" are refused. A random hex token of 16 characters
// passes (it has fewer than 6 different ones about 3 times in 100,000:
// make it longer), `openssl rand -hex 32` always does.
const (
	minTokenLen      = 16
	minTokenDistinct = 6
)

// weakToken says why tok is too weak to guard an endpoint ("" if it is not).
func weakToken(tok string) string {
	distinct := map[rune]bool{}
	for _, r := range tok {
		distinct[r] = true
	}
	switch {
	case len(tok) < minTokenLen:
		return fmt.Sprintf("must be at least %d characters, got %d", minTokenLen, len(tok))
	case strings.ContainsFunc(tok, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return "must not contain spaces or control characters"
	case len(distinct) < minTokenDistinct:
		return fmt.Sprintf("must have at least %d different characters, got %d (it is guessable)", minTokenDistinct, len(distinct))
	}
	return ""
}

// checkAdmin validates the admin API settings. server.admin turns it on
// (server.adminPort alone does not: it always has a value, 8081 by
// default). server.adminToken is optional: see AuthNotes.
func (c *Config) checkAdmin(p *problems) {
	s := &c.Server
	if s.Metrics && s.MetricsToken != "" {
		if why := weakToken(s.MetricsToken); why != "" {
			p.add("server: metricsToken %s (e.g. openssl rand -hex 32)", why)
		}
	}
	if !s.Admin {
		return
	}
	// Without server.adminToken the admin API takes the JWTs of auth (when
	// on) or is open to read only (AuthNotes says which).
	if why := weakToken(s.AdminToken); s.AdminToken != "" && why != "" {
		p.add("server: adminToken %s (e.g. openssl rand -hex 32)", why)
	}
	if strings.TrimSpace(s.AdminHost) == "" {
		p.add("server: adminHost must not be empty when admin is on")
	}
	if s.AdminSessionTTL < Duration(time.Minute) {
		p.add("server: adminSessionTtl must be at least 1m, got %s", time.Duration(s.AdminSessionTTL))
	}
}
