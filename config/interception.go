package config

import (
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/mitm"
	"github.com/proxy-hopper/proxy-hopper/proxy"
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
	CA     *mitm.CA       // nil: interception is off
	Bypass proxy.HostList // bypassDomains and bypassRegex
}

// MaxBypassEntries bounds bypassDomains and bypassRegex (each).
const MaxBypassEntries = 10000

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
			o.Bypass.Addrs = append(o.Bypass.Addrs, ip.WithZone("").Unmap())
			continue
		}
		name, _, err := mitm.ValidName(d)
		if err != nil || name == "" {
			p.add("%s: bypassDomains[%d]: %q is not a domain name or IP address", label, i, ic.BypassDomains[i])
			continue
		}
		o.Bypass.Names = append(o.Bypass.Names, name)
	}
	for i, r := range ic.BypassRegex {
		re, err := regexp.Compile(`^(?:` + r + `)$`)
		if err != nil {
			p.add("%s: bypassRegex[%d]: %q is not valid RE2 syntax: %v", label, i, r, reErr(err))
			continue
		}
		o.Bypass.Regex = append(o.Bypass.Regex, re)
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
