package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// Target is one routing rule: requests whose URL matches Regex leave
// through Pool's IPs.
type Target struct {
	Name       string
	Regex      *regexp.Regexp
	Pool       *pool.Pool
	Upstreams  map[string]Upstream // by pool address
	NumRetries int
	// MaxClientRetries is the most retries X-Proxy-Hopper-Retries may ask
	// for; below NumRetries it counts as NumRetries (the header can always
	// lower the retries).
	MaxClientRetries int
	TLS              *tls.Config // for https origins; nil means system roots
	// Identity, when set, gives each IP a browser persona (headers, cookie
	// jar) on plain-HTTP requests the agent makes itself.
	Identity *identity.Store
	// SpoofUserAgent (spoofUserAgent, proxy-hopper's default true) drops
	// the client's User-Agent from every request the agent makes itself
	// (plain HTTP, and https origins it connects to) and sends a browser's:
	// the IP's identity's, else a random built-in profile's, drawn per
	// attempt. Off, the client's User-Agent passes (an identity still
	// replaces it unless preserveClientHeaders). An X-Proxy-Hopper-User-Agent
	// override wins either way. CONNECT and TLS tunnels are opaque: never
	// rewritten.
	SpoofUserAgent bool
	// Intercept (tlsIntercept): CONNECT and transparent TLS connections
	// this target takes are intercepted when Options.Intercept has a
	// Minter and the host is not bypassed (intercept.go).
	Intercept bool

	tr  *transport
	dir *upstreamDir // shared by the generations of this target name
}

// retriesFor returns the retries of a request that asked for asked
// (X-Proxy-Hopper-Retries; -1 when it did not ask): the target's
// NumRetries, or what it asked for up to max(NumRetries, MaxClientRetries).
func (t *Target) retriesFor(asked int) int {
	if asked < 0 {
		return t.NumRetries
	}
	return min(asked, max(t.NumRetries, t.MaxClientRetries))
}

// destFaults returns the destinations confirmed as failing for t's name.
func (t *Target) destFaults() *destFaults {
	if t.dir == nil {
		return &destFaults{} // not linked (never the case once served)
	}
	return &t.dir.faults
}

// ParseTargetHeader parses an X-Proxy-Hopper-Target value: an absolute
// http or https URL with a host, optionally a base path, and no fragment or
// credentials.
func ParseTargetHeader(v string) (*url.URL, error) {
	if v == "" {
		return nil, errors.New("empty target")
	}
	if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return nil, errors.New("control character in target")
	}
	if strings.ContainsAny(v, " ") {
		return nil, errors.New("space in target (percent-encode it)")
	}
	u, err := url.Parse(v)
	if err != nil {
		return nil, errors.New("target is not a URL")
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		u.Scheme = strings.ToLower(u.Scheme)
	case "":
		return nil, errors.New("target has no scheme (want http:// or https://)")
	default:
		return nil, errors.New("target scheme must be http or https")
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, errors.New("target has no host")
	}
	if u.User != nil {
		return nil, errors.New("target must not carry credentials")
	}
	if u.Fragment != "" {
		return nil, errors.New("target must not have a fragment")
	}
	if err := checkHostPort(u); err != nil {
		return nil, err
	}
	return u, nil
}

// checkHostPort validates the authority of an absolute URL.
func checkHostPort(u *url.URL) error {
	host := u.Hostname()
	if host == "" {
		return errors.New("target has no host")
	}
	if strings.HasPrefix(u.Host, "[") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			return errors.New("invalid IPv6 host")
		}
	} else if len(host) > 253 || strings.ContainsFunc(host, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) {
		return errors.New("invalid host name")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return errors.New("invalid port")
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return errors.New("invalid port")
	}
	return nil
}

// joinTarget builds the outgoing URL from a header-mode base and the
// client's origin-form request target: base path + request path, request
// query (appended to any base query).
func joinTarget(base *url.URL, requestTarget string) (*url.URL, error) {
	if !strings.HasPrefix(requestTarget, "/") {
		return nil, errors.New("header mode needs an origin-form request target")
	}
	ref, err := url.ParseRequestURI(requestTarget)
	if err != nil {
		return nil, errors.New("invalid request target")
	}
	u := *base
	u.Path = strings.TrimSuffix(base.Path, "/") + ref.Path
	u.RawPath = ""
	if base.RawPath != "" || ref.RawPath != "" {
		u.RawPath = strings.TrimSuffix(base.EscapedPath(), "/") + ref.EscapedPath()
	}
	switch {
	case base.RawQuery == "":
		u.RawQuery = ref.RawQuery
	case ref.RawQuery != "":
		u.RawQuery = base.RawQuery + "&" + ref.RawQuery
	}
	return &u, nil
}

// hostPort returns the URL's host with its port, defaulting by scheme.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// placeholderAuthority stands in for a URL's host and port when matching
// tells a match the host takes part in from one the path makes on its own.
// .invalid never resolves (RFC 6761).
const placeholderAuthority = "proxy-hopper.invalid"

// matches reports whether the target takes key: a URL
// (scheme://authority/path?query: header, explicit and transparent HTTP
// requests) or an authority (host:port: CONNECT and TLS tunnels, matched
// as it is).
//
// A URL is matched without its query (and fragment), so nothing after '?'
// can make a target match. A match the path makes on its own does not
// count either: when the regex also matches the URL with its authority
// replaced by a placeholder, the target takes the URL only if the regex
// matches scheme://authority/ without the path as well, or matches any
// authority (a catch-all such as .* or ^https://). So a regex naming a
// host can only be reached through that host: appending ?api.example.com
// or /api.example.com to a URL of another host matches nothing, whether
// the regex is anchored or not. A regex that selects by path alone,
// whatever the host, therefore never matches: name the hosts in it.
func (t *Target) matches(key string) bool {
	re := t.Regex
	i := strings.Index(key, "://")
	if i < 0 {
		return re.MatchString(key)
	}
	scheme, rest := key[:i+3], key[i+3:]
	if j := strings.IndexAny(rest, "?#"); j >= 0 {
		rest = rest[:j]
	}
	authority, path := rest, ""
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		authority, path = rest[:j], rest[j:]
	}
	if !re.MatchString(scheme + rest) {
		return false
	}
	if path == "" || path == "/" || re.MatchString(scheme+authority+"/") {
		return true
	}
	if !re.MatchString(scheme + placeholderAuthority + path) {
		return true // the host takes part in the match
	}
	return re.MatchString(scheme + placeholderAuthority + "/")
}
