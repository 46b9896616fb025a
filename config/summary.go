package config

import (
	"fmt"
	"strings"
	"unicode"
)

// Summary is what `proxy-hopper validate` prints, in proxy-hopper's shape:
// providers and pools when there are any, "Config OK — N target(s)
// defined." and a line per target, then the server's address and backend.
// It never shows credentials.
func (c *Config) Summary(targets []ResolvedTarget) string {
	var b strings.Builder
	if len(c.ProxyProviders) > 0 {
		fmt.Fprintf(&b, "Providers: %d defined.\n", len(c.ProxyProviders))
		for _, pc := range c.ProxyProviders {
			fmt.Fprintf(&b, "  %s: %d IP(s)", pyRepr(pc.Name), len(pc.IPList))
			if pc.RegionTag != "" {
				fmt.Fprintf(&b, ", region=%s", pyRepr(pc.RegionTag))
			}
			if pc.Auth != nil {
				b.WriteString(", auth=basic\n")
			} else {
				b.WriteString(", auth=none\n")
			}
		}
	}
	if len(c.IPPools) > 0 {
		fmt.Fprintf(&b, "Pools: %d defined.\n", len(c.IPPools))
		for _, pc := range c.IPPools {
			names := make([]string, len(pc.IPRequests))
			for i, r := range pc.IPRequests {
				names[i] = pyRepr(r.Provider)
			}
			fmt.Fprintf(&b, "  %s: %d request(s), providers=[%s]", pyRepr(pc.Name), len(pc.IPRequests), strings.Join(names, ", "))
			if len(pc.IPList) > 0 {
				fmt.Fprintf(&b, ", %d inline IP(s)", len(pc.IPList))
			}
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "Config OK — %d target(s) defined.\n", len(targets))
	for i, t := range targets {
		fmt.Fprintf(&b, "  %s: %d IP(s)", pyRepr(t.Name), len(t.IPs))
		if i < len(c.Targets) && c.Targets[i].Name == t.Name && c.Targets[i].IPPool != "" {
			fmt.Fprintf(&b, ", pool=%s", pyRepr(c.Targets[i].IPPool))
		}
		re := ""
		if t.Regex != nil {
			re = t.Regex.String()
		}
		fmt.Fprintf(&b, ", regex=%s", pyRepr(re))
		if t.Intercept {
			b.WriteString(", tlsIntercept")
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "Server defaults: host=%s, port=%d, backend=%s\n", c.Server.Host, c.Server.Port, c.Server.Backend)
	if ic := c.Interception; ic.CACert != "" {
		fmt.Fprintf(&b, "TLS interception: CA %s (key %s), bypass: %d domain(s), %d regex(es)\n",
			ic.CACert, ic.CAKey, len(ic.BypassDomains), len(ic.BypassRegex))
	}
	return b.String()
}

// pyRepr quotes s as Python's repr() does, which is how proxy-hopper
// prints names and regexes: 'a\\.b'.
func pyRepr(s string) string {
	q := byte('\'')
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == rune(q):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case !unicode.IsPrint(r) && r <= 0xff:
			fmt.Fprintf(&b, `\x%02x`, r)
		case !unicode.IsPrint(r) && r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		case !unicode.IsPrint(r):
			fmt.Fprintf(&b, `\U%08x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}
