package config

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// Resolved is a validated Config in the form the runtime takes it: every
// string of the file (addresses, CIDRs, ports, regexes, levels, policies)
// parsed once, here. No other package parses config strings.
type Resolved struct {
	// Config is the loaded config (defaults filled in) these values come
	// from: Summary, AuthNotes and RestartKeys read it, and the agent keeps
	// it to compare a reload with.
	Config *Config
	// Targets are the hot-reloadable part, in match order: each with its
	// own IP list (and so its own runtime pool), also when targets share an
	// ipPool.
	Targets []ResolvedTarget

	// The restart-only part, parsed.
	LogLevel     slog.Level
	Auth         auth.Config
	Destinations Destinations
	Transparent  TransparentOptions
	Interception InterceptionOptions
}

// Resolve validates the whole config, collecting every problem into one
// *ValidationError, and returns it resolved.
func (c *Config) Resolve() (*Resolved, error) {
	var p problems
	r := &Resolved{Config: c}
	r.LogLevel, r.Destinations = c.checkServer(&p)
	c.checkProber(&p)
	r.Transparent.Unmatched = c.checkUnmatched(&p)
	r.Transparent.Local = c.checkTransparent(&p)
	r.Transparent.Gateway = c.checkGateway(&p)
	r.Interception = c.checkInterception(&p)
	c.checkAuth(&p)
	r.Auth = c.resolveAuth(&p)
	c.checkAdmin(&p)
	providers := c.checkProviders(&p)
	pools := c.checkPools(&p, providers)
	r.Targets = c.resolveTargets(&p, providers, pools)
	c.checkHasTargets(&p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return r, nil
}

// ResolvedIP is one upstream proxy address with what the config says of it.
type ResolvedIP struct {
	Host     string
	Port     int
	Username string
	Password string
	Provider string
	Region   string
}

// Addr is host:port, the key of the IP in its pool.
func (r ResolvedIP) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// ResolvedTarget is a validated target ready to be wired: regex compiled,
// IPs resolved through its pool and providers, TLS loaded.
type ResolvedTarget struct {
	Name       string
	Regex      *regexp.Regexp
	Pool       pool.Config
	NumRetries int
	IPs        []ResolvedIP
	TLS        *tls.Config

	// MaxClientRetries is the most retries X-Proxy-Hopper-Retries may ask for.
	MaxClientRetries int
	// Identity is the per-IP identity policy; Identity.Enabled is false
	// when the target's identity block is off.
	Identity identity.Config
	// SpoofUserAgent replaces the client's User-Agent with a browser's
	// (spoofUserAgent, default true).
	SpoofUserAgent bool
	// Intercept: CONNECT and transparent TLS flows this target matches
	// are intercepted (tlsIntercept) unless their host is bypassed.
	Intercept bool
}

// String is the one-line summary `validate` prints.
func (t ResolvedTarget) String() string {
	return fmt.Sprintf("%s: %d IP(s), regex %s", t.Name, len(t.IPs), t.Regex)
}
