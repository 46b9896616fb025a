package config

import (
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/mitm"
)

// InterceptionConfig is the `interception:` block: the CA that signs the
// certificates the agent shows clients whose TLS it terminates, and the
// hosts it never intercepts. Which traffic is intercepted is chosen per
// target (tlsIntercept). Restart-only, like server.
type InterceptionConfig struct {
	CACert string `mapstructure:"caCert"` // PEM certificate (proxy-hopper ca init --cert)
	CAKey  string `mapstructure:"caKey"`  // PEM private key, mode 0600 (--key)
	// BypassDomains are never intercepted: each entry matches the domain
	// and its subdomains (an IP literal matches itself).
	BypassDomains []string `mapstructure:"bypassDomains"`
	// BypassRegex are never intercepted: RE2, matched against the whole
	// host name (lower case, no port).
	BypassRegex []string `mapstructure:"bypassRegex"`
}

// InterceptionOptions are the interception: block resolved.
type InterceptionOptions struct {
	CA      *mitm.CA // nil: interception is off
	domains []string
	ips     []netip.Addr
	regex   []*regexp.Regexp
}

// MaxBypassEntries bounds bypassDomains and bypassRegex (each).
const MaxBypassEntries = 10000

// Bypassed reports whether host (a name or IP literal, no port, brackets
// or trailing dot allowed) is on the bypass list.
func (o *InterceptionOptions) Bypassed(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if ip, err := netip.ParseAddr(host); err == nil {
		for _, b := range o.ips {
			if b == ip.Unmap() {
				return true
			}
		}
	} else {
		for _, d := range o.domains {
			if host == d || (strings.HasSuffix(host, d) && host[len(host)-len(d)-1] == '.') {
				return true
			}
		}
	}
	for _, re := range o.regex {
		if re.MatchString(host) {
			return true
		}
	}
	return false
}

// checkInterception validates the interception: block and loads the CA
// (every check the agent makes at start-up: key mode 0600, a CA able to
// sign, key and certificate matching, within its validity).
func (c *Config) checkInterception(p *problems) InterceptionOptions {
	ic := &c.Interception
	var o InterceptionOptions
	const label = "interception"
	if len(ic.BypassDomains) > MaxBypassEntries || len(ic.BypassRegex) > MaxBypassEntries {
		p.add("%s: bypassDomains and bypassRegex take at most %d entries each", label, MaxBypassEntries)
	}
	for i, d := range ic.BypassDomains {
		d = strings.TrimSuffix(strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(d, "*"), ".")), ".")
		if ip, err := netip.ParseAddr(strings.Trim(d, "[]")); err == nil {
			o.ips = append(o.ips, ip.Unmap())
			continue
		}
		name, _, err := mitm.ValidName(d)
		if err != nil || name == "" {
			p.add("%s: bypassDomains[%d]: %q is not a domain name or IP address", label, i, ic.BypassDomains[i])
			continue
		}
		o.domains = append(o.domains, name)
	}
	for i, r := range ic.BypassRegex {
		re, err := regexp.Compile(`^(?:` + r + `)$`)
		if err != nil {
			p.add("%s: bypassRegex[%d]: %q is not valid RE2 syntax: %v", label, i, r, reErr(err))
			continue
		}
		o.regex = append(o.regex, re)
	}
	switch {
	case ic.CACert == "" && ic.CAKey == "":
	case ic.CACert == "" || ic.CAKey == "":
		p.add("%s: caCert and caKey go together: set both (proxy-hopper ca init --cert FILE --key FILE writes them) or neither", label)
	default:
		ca, err := mitm.LoadCA(c.path(ic.CACert), c.path(ic.CAKey))
		if err != nil {
			p.add("%s: %v", label, err)
		} else {
			o.CA = ca
		}
	}
	caSet := ic.CACert != "" && ic.CAKey != ""
	for i := range c.Targets {
		if t := &c.Targets[i]; t.TLSIntercept && !caSet {
			p.add("%s: tlsIntercept needs interception.caCert and interception.caKey (create them with proxy-hopper ca init)",
				entityLabel("targets", i, map[string]any{"name": t.Name}))
		}
	}
	return o
}

// path resolves a file named in the config: relative paths are read from
// the config file's directory.
func (c *Config) path(p string) string {
	if !filepath.IsAbs(p) && c.baseDir != "" {
		return filepath.Join(c.baseDir, p)
	}
	return p
}

// interceptionWarnings names a CA no target uses and bypass entries
// without a CA: keys that do nothing.
func (c *Config) interceptionWarnings() []string {
	ic := &c.Interception
	if ic.CACert == "" && len(ic.BypassDomains)+len(ic.BypassRegex) > 0 {
		return []string{"interception: bypassDomains/bypassRegex are set but interception has no CA (caCert, caKey): nothing is intercepted, so nothing is bypassed"}
	}
	if ic.CACert == "" {
		return nil
	}
	for _, t := range c.Targets {
		if t.TLSIntercept {
			return nil
		}
	}
	return []string{"interception: the CA is loaded but no target sets tlsIntercept: true, so nothing is intercepted (targets added at runtime may set it)"}
}
