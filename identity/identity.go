// Package identity gives each upstream IP of a target a persistent client
// persona: a browser fingerprint (Profile) and a cookie jar. Requests sent
// through the same IP look like one browser session; rotation replaces the
// persona with a fresh one and an empty jar.
//
// The package knows nothing of the pool or the HTTP proxy. The proxy drives
// it, per request through IP addr of a target with a Store:
//
//	ss := store.Get(addr).Session(principal)
//	if wu, ok := ss.WarmupURL(u); ok {
//		// GET wu through addr with ss.Apply(nil, wu); on any response:
//		ss.Learn(wu, resp.Header); ss.MarkWarmedUp(); store.OnResponse(addr, resp.StatusCode)
//	}
//	fields := ss.Apply(clientFields, u) // the outgoing header list, in order
//	// send, read the response head
//	ss.Learn(u, resp.Header)
//	store.OnResponse(addr, resp.StatusCode)
//
// and the pool's quarantine-release hook calls store.Rotate(addr,
// ReasonQuarantine) before the IP re-enters service.
//
// # Headers
//
// The identity owns the fingerprint headers: User-Agent, Accept,
// Accept-Language, Accept-Encoding, Upgrade-Insecure-Requests, Priority,
// and every Sec-CH-* and Sec-Fetch-* header. By default the identity's
// values win: the client's versions of all of those are dropped, even ones
// the profile does not send (a Sec-CH-UA from the client would contradict a
// Firefox profile). With Config.PreserveClientHeaders the client's values
// are kept where the client sent them and the identity fills in the rest.
// Either way the result is in the profile's browser order; headers the
// identity does not own keep their values and go to that browser's place
// for them.
//
// Browsers send client hints, Sec-Fetch-* and br/zstd only to potentially
// trustworthy origins (https, localhost, loopback); Apply does the same, so
// a plain-http request to a remote origin carries fewer headers than an
// https one.
//
// Rewriting Accept-Encoding means the origin may answer with a coding the
// client did not ask for (br, zstd); the response is relayed as the origin
// sent it, Content-Encoding included.
//
// # Cookies
//
// Each identity has its own RFC 6265 jars (domain, path, expiry, Secure,
// host-only; net/http/cookiejar with the public suffix list), one per
// principal: the caller's opaque name for who sends the request (with auth
// on, the key or JWT subject; "" when auth is off). Cookies learnt through
// one IP never go out through another, cookies learnt for one principal
// never go out for another, and a rotation starts with empty jars. An
// identity keeps the jars of maxSessions principals, dropping the least
// recently used one beyond that. The client's own Cookie header is merged with the jar's
// cookies for the URL into one Cookie header: the client's cookies first, as
// sent, then the jar's, in RFC 6265 order; where both have a cookie of the
// same name the client's wins and the jar's is left out.
//
// # Scope
//
// The proxy can apply identities only where it sees the HTTP request: plain
// HTTP (header mode, absolute-form proxy requests, transparent plain HTTP)
// and https origins the agent itself connects to. Inside a client's CONNECT
// or TLS tunnel the bytes are opaque, so no headers are changed and no
// cookies are learnt there.
package identity

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/publicsuffix"
)

// ErrUnknownProfile is returned by Config.Validate for a profile name that
// is not built in.
var ErrUnknownProfile = errors.New("unknown profile")

// Cookie limits per identity, RFC 6265 section 6.1's minimums: a
// misbehaving origin cannot grow a jar without bound. maxCookies counts
// the cookies of all the identity's jars together.
const (
	maxCookieBytes    = 4096 // name + value
	maxCookiesPerResp = 50
	maxCookies        = 3000
	maxSessions       = 64 // principals with a jar, per identity
)

// Config is a target's identity policy, the identity: block of proxy-hopper.
// Start from DefaultConfig: the zero Config turns cookies and rotation on
// 429 off.
type Config struct {
	// Enabled is the master switch. When false, Apply returns the client's
	// headers unchanged, Learn stores nothing, no warm-up is asked for and
	// OnResponse never rotates.
	Enabled bool
	// Cookies keeps a cookie jar per identity. Default true.
	Cookies bool
	// RotateAfterRequests rotates an identity after that many responses;
	// 0 never.
	RotateAfterRequests int
	// RotateOn429 rotates an identity when a response is 429. Default true.
	RotateOn429 bool
	// Warmup asks for a GET of Warmup.Path through a fresh identity before
	// its first request.
	Warmup Warmup
	// Profile pins every identity to the built-in profile of this name;
	// "" picks one at random for each new identity.
	Profile string
	// PreserveClientHeaders keeps the client's fingerprint headers where it
	// sent them, instead of replacing them with the identity's.
	PreserveClientHeaders bool
}

// Warmup is the warm-up request of a fresh identity.
type Warmup struct {
	Enabled bool
	// Path is the origin-form path (and query) to GET on the request's
	// host; "" means "/".
	Path string
}

// DefaultConfig returns proxy-hopper's defaults: disabled, and when
// enabled, cookies on, rotation on 429, warm-up path "/" (warm-up off).
func DefaultConfig() Config {
	return Config{Cookies: true, RotateOn429: true, Warmup: Warmup{Path: "/"}}
}

// Validate reports a policy that cannot work. Errors name the field as
// configured, below the target's identity block.
func (c Config) Validate() error {
	if c.RotateAfterRequests < 0 {
		return errors.New("identity.rotateAfterRequests must not be negative")
	}
	if c.Profile != "" {
		if _, ok := ProfileByName(c.Profile); !ok {
			return fmt.Errorf("identity.profile: %w %q (known: %s)", ErrUnknownProfile, c.Profile, profileNames())
		}
	}
	if p := c.Warmup.Path; p != "" {
		if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") {
			return fmt.Errorf("identity.warmup.path %q must be an absolute path such as /", p)
		}
		if _, err := url.ParseRequestURI(p); err != nil {
			return fmt.Errorf("identity.warmup.path %q: %w", p, err)
		}
	}
	return nil
}

// Identity is the persona of one IP of one target. It is safe for
// concurrent use. An Identity replaced by a rotation stays usable (a request
// in flight finishes with it) but is no longer handed out, so what it learns
// afterwards is discarded with it.
type Identity struct {
	id      string
	addr    string
	profile Profile
	created time.Time
	cfg     *atomic.Pointer[Config] // the store's live policy

	requests atomic.Int64

	mu       sync.Mutex
	sessions map[string]*Session // by principal, at most maxSessions
	cookies  int                 // cookies stored in all sessions, for maxCookies
	tick     uint64              // last session use, for eviction
}

// Session is an identity as one principal uses it: the IP's persona with
// the principal's own cookie jar and warm-up. It is safe for concurrent use.
type Session struct {
	id          *Identity
	jar         *cookiejar.Jar
	needsWarmup atomic.Bool

	// Guarded by id.mu.
	cookies map[string]struct{} // keys of cookies stored, for maxCookies
	used    uint64
	evicted bool
}

// Session returns principal's session of the identity, creating it (empty
// jar, warm-up pending) on first use. principal is opaque to the identity;
// "" is as good a name as any.
func (id *Identity) Session(principal string) *Session {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.tick++
	if ss, ok := id.sessions[principal]; ok {
		ss.used = id.tick
		return ss
	}
	if len(id.sessions) >= maxSessions {
		var oldest string
		var at uint64
		for p, ss := range id.sessions {
			if at == 0 || ss.used < at {
				oldest, at = p, ss.used
			}
		}
		ss := id.sessions[oldest]
		id.cookies -= len(ss.cookies)
		ss.evicted = true
		delete(id.sessions, oldest)
	}
	jar, _ := cookiejar.New(&cookiejar.Options{PublicSuffixList: publicsuffix.List}) // never fails
	ss := &Session{id: id, jar: jar, cookies: map[string]struct{}{}, used: id.tick}
	ss.needsWarmup.Store(true)
	id.sessions[principal] = ss
	return ss
}

// Sessions returns the number of principals with a session.
func (id *Identity) Sessions() int {
	id.mu.Lock()
	defer id.mu.Unlock()
	return len(id.sessions)
}

// Identity returns the identity the session belongs to.
func (ss *Session) Identity() *Identity { return ss.id }

// ID returns the identity's random identifier, for logs.
func (id *Identity) ID() string { return id.id }

// Addr returns the IP address the identity belongs to.
func (id *Identity) Addr() string { return id.addr }

// Profile returns the identity's browser fingerprint.
func (id *Identity) Profile() Profile { return id.profile }

// Created returns when the identity was created.
func (id *Identity) Created() time.Time { return id.created }

// Requests returns how many responses the store has counted for it.
func (id *Identity) Requests() int { return int(id.requests.Load()) }

// Cookies, WarmupPath, WarmupURL, MarkWarmedUp, Apply and Learn of an
// Identity are those of its session for principal "" (auth off).

func (id *Identity) Cookies(u *url.URL) []*http.Cookie { return id.Session("").Cookies(u) }

func (id *Identity) WarmupPath() (string, bool) { return id.Session("").WarmupPath() }

func (id *Identity) WarmupURL(u *url.URL) (*url.URL, bool) { return id.Session("").WarmupURL(u) }

func (id *Identity) MarkWarmedUp() { id.Session("").MarkWarmedUp() }

func (id *Identity) Apply(client []Header, u *url.URL) []Header {
	return id.Session("").Apply(client, u)
}

func (id *Identity) Learn(u *url.URL, respHeader http.Header) { id.Session("").Learn(u, respHeader) }

// Cookies returns the jar's cookies for u (name and value only), in the
// order they would be sent. Nil when cookies are off.
func (ss *Session) Cookies(u *url.URL) []*http.Cookie {
	if !ss.id.cfg.Load().Cookies || u == nil {
		return nil
	}
	return ss.jar.Cookies(u)
}

// WarmupPath returns the warm-up path when the session still needs its
// warm-up: identities and warm-up are enabled and MarkWarmedUp has not been
// called since the session was created.
func (ss *Session) WarmupPath() (string, bool) {
	cfg := ss.id.cfg.Load()
	if !cfg.Enabled || !cfg.Warmup.Enabled || !ss.needsWarmup.Load() {
		return "", false
	}
	if cfg.Warmup.Path == "" {
		return "/", true
	}
	return cfg.Warmup.Path, true
}

// WarmupURL returns the warm-up URL for a request to u: the warm-up path on
// u's scheme and host. ok is false when no warm-up is needed.
func (ss *Session) WarmupURL(u *url.URL) (wu *url.URL, ok bool) {
	p, ok := ss.WarmupPath()
	if !ok || u == nil {
		return nil, false
	}
	ref, err := url.ParseRequestURI(p)
	if err != nil { // Validate rejects such paths
		ref = &url.URL{Path: "/"}
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host, Path: ref.Path, RawPath: ref.RawPath, RawQuery: ref.RawQuery}, true
}

// MarkWarmedUp records that the warm-up got a response (any status), so no
// further warm-up is asked for. Leave it uncalled after a transport error
// and the next request tries again.
func (ss *Session) MarkWarmedUp() { ss.needsWarmup.Store(false) }

// Apply returns the header list to send to u through this identity, in the
// profile's browser order: the identity's fingerprint headers (see the
// package documentation for who wins over the client), the client's other
// headers, and one Cookie header merging the client's cookies with the
// jar's. client is not modified; pass nil for a request of the proxy's own,
// such as the warm-up. Apply does not add Host, Connection or framing
// headers, and passes the client's through: the caller handles those.
func (ss *Session) Apply(client []Header, u *url.URL) []Header {
	id := ss.id
	cfg := id.cfg.Load()
	if !cfg.Enabled {
		return append([]Header(nil), client...)
	}
	own := id.profile.HeadersFor(u)

	// Sort the client's headers out: cookies to merge, fingerprint headers
	// kept only when preserved, the rest kept.
	var cookies []string
	kept := make([]Header, 0, len(client))
	for _, h := range client {
		switch {
		case cfg.Cookies && strings.EqualFold(h.Name, "Cookie"):
			cookies = append(cookies, h.Value)
		case fingerprint(h.Name) && !cfg.PreserveClientHeaders:
		default:
			kept = append(kept, h)
		}
	}
	var cookie string
	if cfg.Cookies {
		cookie = mergeCookies(cookies, ss.jar.Cookies(u))
	}

	out := make([]Header, 0, len(own)+len(kept)+1)
	used := make([]bool, len(kept))
	// takeClient appends the kept client headers called name, under name's
	// spelling when rename is set, and reports whether there were any.
	takeClient := func(name string, rename bool) bool {
		found := false
		for i, h := range kept {
			if !used[i] && strings.EqualFold(h.Name, name) {
				if rename {
					h.Name = name
				}
				out = append(out, h)
				used[i] = true
				found = true
			}
		}
		return found
	}
	for _, name := range id.profile.order {
		switch {
		case name == extras:
			for i, h := range kept {
				if !used[i] && !id.profile.ordered(h.Name) {
					out = append(out, h)
					used[i] = true
				}
			}
		case cfg.Cookies && strings.EqualFold(name, "Cookie"):
			if cookie != "" {
				out = append(out, Header{"Cookie", cookie})
			}
		default:
			v, ok := lookup(own, name)
			if ok && cfg.PreserveClientHeaders && takeClient(name, true) {
				continue
			}
			if ok {
				out = append(out, Header{name, v})
				continue
			}
			takeClient(name, false)
		}
	}
	return out
}

// Learn stores the cookies a response from u sets (its Set-Cookie headers)
// in this session's jar, and no other. Cookies over the per-identity limits
// are dropped, and so is everything learnt by a session evicted meanwhile.
func (ss *Session) Learn(u *url.URL, respHeader http.Header) {
	id := ss.id
	cfg := id.cfg.Load()
	if !cfg.Enabled || !cfg.Cookies || u == nil || len(respHeader.Values("Set-Cookie")) == 0 {
		return
	}
	parsed := (&http.Response{Header: respHeader}).Cookies()
	if len(parsed) > maxCookiesPerResp {
		parsed = parsed[:maxCookiesPerResp]
	}
	keep := parsed[:0]
	id.mu.Lock()
	if ss.evicted {
		id.mu.Unlock()
		return
	}
	for _, c := range parsed {
		if len(c.Name)+len(c.Value) > maxCookieBytes {
			continue
		}
		domain := c.Domain
		if domain == "" {
			domain = u.Hostname()
		}
		key := strings.ToLower(domain) + "\x00" + c.Path + "\x00" + c.Name
		if _, seen := ss.cookies[key]; !seen {
			if id.cookies >= maxCookies {
				continue
			}
			ss.cookies[key] = struct{}{}
			id.cookies++
		}
		keep = append(keep, c)
	}
	id.mu.Unlock()
	ss.jar.SetCookies(u, keep)
}

// ordered reports whether name has a place in the profile's order.
func (p Profile) ordered(name string) bool {
	for _, n := range p.order {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// fingerprint reports whether name is a header the identity owns.
func fingerprint(name string) bool {
	switch strings.ToLower(name) {
	case "user-agent", "accept", "accept-language", "accept-encoding", "upgrade-insecure-requests", "priority":
		return true
	}
	return hasPrefixFold(name, "sec-ch-") || hasPrefixFold(name, "sec-fetch-")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func lookup(hs []Header, name string) (string, bool) {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return h.Value, true
		}
	}
	return "", false
}

// mergeCookies joins the client's Cookie header values and the jar's
// cookies into one Cookie header value: the client's pairs first, verbatim,
// then the jar's cookies whose names the client did not send.
func mergeCookies(client []string, jar []*http.Cookie) string {
	var pairs []string
	names := map[string]bool{}
	for _, v := range client {
		for _, p := range strings.Split(v, ";") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			name, _, _ := strings.Cut(p, "=")
			names[strings.TrimSpace(name)] = true
			pairs = append(pairs, p)
		}
	}
	for _, c := range jar {
		if !names[c.Name] {
			pairs = append(pairs, (&http.Cookie{Name: c.Name, Value: c.Value, Quoted: c.Quoted}).String())
		}
	}
	return strings.Join(pairs, "; ")
}
