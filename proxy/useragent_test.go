package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/identity"
)

// uaOrigin answers every request with the User-Agent values it received,
// joined by "|" (so a duplicate shows), "" when none.
func uaOrigin(t *testing.T, tlsOn bool) *origin {
	return newOrigin(t, tlsOn, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Join(r.Header.Values("User-Agent"), "|"))
	})
}

// profileUAs are the built-in profiles' User-Agents, read from their
// headers (not from the proxy's own list).
func profileUAs() []string {
	var uas []string
	for _, p := range identity.Profiles() {
		for _, h := range p.Headers() {
			if h.Name == "User-Agent" {
				uas = append(uas, h.Value)
			}
		}
	}
	return uas
}

// uaVia sends one GET to o through the agent in mode ("header", or "proxy"
// for absolute form) with the headers given (a User-Agent of "" sends
// none) and returns what User-Agent the origin saw.
func (e *env) uaVia(t *testing.T, mode string, o *origin, hdr map[string]string) string {
	t.Helper()
	var (
		req *http.Request
		c   *http.Client
	)
	switch mode {
	case "header":
		req, _ = http.NewRequest("GET", e.url("/ua"), nil)
		req.Header.Set(HeaderTarget, o.URL)
		c = e.headerClient()
	case "proxy":
		req, _ = http.NewRequest("GET", o.URL+"/ua", nil)
		c = e.proxyClient()
	default:
		t.Fatalf("mode %q", mode)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, body := do(t, c, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d: %s", mode, resp.StatusCode, body)
	}
	return body
}

// spoofUserAgent as proxy-hopper: on, the client's User-Agent never
// reaches the origin and a browser's does (a random profile's without an
// identity); X-Proxy-Hopper-User-Agent wins whatever the setting; off, the
// client's passes. Through header mode to http and https origins and
// absolute-form requests, each via a real tinyproxy.
func TestSpoofUserAgent(t *testing.T) {
	plain, secure := uaOrigin(t, false), uaOrigin(t, true)
	browser := profileUAs()
	const client, override = "curl/8.5.0", "my-crawler/2.1 (+https://example.org/bot)"
	cases := []struct {
		name  string
		spoof bool
		hdr   map[string]string
		want  string // "browser": any built-in profile's
	}{
		{"spoof replaces the client's", true, map[string]string{"User-Agent": client}, "browser"},
		{"spoof adds one when the client sent none", true, map[string]string{"User-Agent": ""}, "browser"},
		{"spoof: override wins", true, map[string]string{"User-Agent": client, HeaderUserAgent: override}, override},
		{"spoof: override without a client UA", true, map[string]string{"User-Agent": "", HeaderUserAgent: override}, override},
		{"off: the client's passes", false, map[string]string{"User-Agent": client}, client},
		{"off: none stays none", false, map[string]string{"User-Agent": ""}, ""},
		{"off: override wins", false, map[string]string{"User-Agent": client, HeaderUserAgent: override}, override},
	}
	envs := map[bool]*env{
		true:  newEnv(t, envOptions{upstreams: 2, spoofUA: true, tls: caOf(secure)}),
		false: newEnv(t, envOptions{upstreams: 2, spoofUA: false, tls: caOf(secure)}),
	}
	for _, tc := range cases {
		for _, via := range []struct {
			mode string
			o    *origin
		}{{"header", plain}, {"header", secure}, {"proxy", plain}} {
			t.Run(tc.name+"/"+via.mode+"/"+strings.SplitN(via.o.URL, ":", 2)[0], func(t *testing.T) {
				got := envs[tc.spoof].uaVia(t, via.mode, via.o, tc.hdr)
				switch {
				case tc.want == "browser":
					if !slices.Contains(browser, got) {
						t.Errorf("origin saw User-Agent %q, want one built-in browser's", got)
					}
				case got != tc.want:
					t.Errorf("origin saw User-Agent %q, want %q", got, tc.want)
				}
			})
		}
	}
}

// Without an identity each request draws its browser at random, as
// proxy-hopper does, rather than one User-Agent for every request.
func TestSpoofUserAgentRandomPerRequest(t *testing.T) {
	o := uaOrigin(t, false)
	e := newEnv(t, envOptions{upstreams: 1, spoofUA: true})
	seen := map[string]bool{}
	for i := 0; i < 40; i++ {
		seen[e.uaVia(t, "header", o, map[string]string{"User-Agent": "curl/8"})] = true
	}
	// 6 profiles: 40 draws all alike has odds 6^-39.
	if len(seen) < 2 {
		t.Errorf("40 requests all sent %v", seen)
	}
}

// With an identity the IP's persona's User-Agent goes out, the same one for
// every request through that IP. spoofUserAgent drops the client's even
// when preserveClientHeaders keeps its other headers; off, with
// preserveClientHeaders, the client's passes; off without it, the
// identity's (as proxy-hopper's identity always replaces it).
func TestSpoofUserAgentIdentity(t *testing.T) {
	o := uaOrigin(t, false)
	const client = "curl/8.5.0"
	for _, tc := range []struct {
		name            string
		spoof, preserve bool
		wantClient      bool
	}{
		{"spoof", true, false, false},
		{"spoof with preserveClientHeaders", true, true, false},
		{"off", false, false, false},
		{"off with preserveClientHeaders", false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := identity.DefaultConfig()
			cfg.Enabled, cfg.PreserveClientHeaders = true, tc.preserve
			store := newStore(t, cfg)
			e := newEnv(t, envOptions{upstreams: 2, identity: store, spoofUA: tc.spoof})
			for i := 0; i < 6; i++ {
				got := e.uaVia(t, "header", o, map[string]string{"User-Agent": client})
				att := e.attemptsN(t, i+1)
				want := store.Get(att[i].Addr).Profile().UserAgent()
				if tc.wantClient {
					want = client
				}
				if got != want {
					t.Fatalf("request %d via %s: origin saw %q, want %q", i, att[i].Addr, got, want)
				}
			}
			// The override still wins over the persona.
			if got := e.uaVia(t, "header", o, map[string]string{"User-Agent": client, HeaderUserAgent: "x/1"}); got != "x/1" {
				t.Errorf("override with identity: origin saw %q", got)
			}
		})
	}
}

// Transparent plain HTTP takes the same path: spoofed, and overridden by the
// header.
func TestSpoofUserAgentTransparent(t *testing.T) {
	o := uaOrigin(t, false)
	e := newEnv(t, envOptions{upstreams: 1, regex: `127\.0\.0\.1`, spoofUA: true})
	orig := strings.TrimPrefix(o.URL, "http://")
	ln := transparentListener(t, e, orig)
	c, err := net.Dial("tcp", ln)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET /a HTTP/1.1\r\nHost: %s\r\nUser-Agent: curl/8\r\n\r\n", orig)
	if resp, body := readRawResponse(t, br, "GET"); resp.StatusCode != 200 || !slices.Contains(profileUAs(), body) {
		t.Errorf("transparent: %d, origin saw User-Agent %q, want a browser's", resp.StatusCode, body)
	}
	fmt.Fprintf(c, "GET /b HTTP/1.1\r\nHost: %s\r\nUser-Agent: curl/8\r\n%s: mine/1\r\n\r\n", orig, HeaderUserAgent)
	if resp, body := readRawResponse(t, br, "GET"); resp.StatusCode != 200 || body != "mine/1" {
		t.Errorf("transparent override: %d, origin saw User-Agent %q", resp.StatusCode, body)
	}
}

// A CONNECT tunnel is opaque: the client's User-Agent inside it reaches the
// origin unchanged even with spoofUserAgent on (documented).
func TestSpoofUserAgentNotInTunnels(t *testing.T) {
	o := uaOrigin(t, true)
	e := newEnv(t, envOptions{upstreams: 1, spoofUA: true})
	c := e.proxyClient()
	c.Transport.(*http.Transport).TLSClientConfig = caOf(o)
	req, _ := http.NewRequest("GET", o.URL+"/ua", nil)
	req.Header.Set("User-Agent", "curl/8")
	if resp, body := do(t, c, req); resp.StatusCode != 200 || body != "curl/8" {
		t.Errorf("CONNECT: %d, origin saw %q, want the client's untouched", resp.StatusCode, body)
	}
}

// X-Proxy-Hopper-User-Agent is a client's bytes: one, at most
// MaxUserAgentLen bytes, no control characters; anything else is refused
// with 400 before an IP is taken, in every mode that reads it.
func TestUserAgentOverrideBounded(t *testing.T) {
	o := uaOrigin(t, false)
	e := newEnv(t, envOptions{upstreams: 1, regex: `127\.0\.0\.1`, spoofUA: true})
	orig := strings.TrimPrefix(o.URL, "http://")
	tln := transparentListener(t, e, orig)
	long := strings.Repeat("a", MaxUserAgentLen+1)
	for _, tc := range []struct {
		name, hdr, want string
	}{
		{"too long", HeaderUserAgent + ": " + long + "\r\n", "longer than"},
		{"twice", HeaderUserAgent + ": a\r\n" + strings.ToLower(HeaderUserAgent) + ": b\r\n", "more than one"},
		{"bare CR", HeaderUserAgent + ": a\rb\r\n", "bare CR"},
		{"NUL", HeaderUserAgent + ": a\x00b\r\n", "invalid character"},
	} {
		for _, m := range []struct{ mode, addr, head string }{
			{"header", e.addr, "GET /ua HTTP/1.1\r\nHost: x\r\n" + HeaderTarget + ": " + o.URL + "\r\n"},
			{"proxy", e.addr, "GET " + o.URL + "/ua HTTP/1.1\r\nHost: " + orig + "\r\n"},
			{"transparent", tln, "GET /ua HTTP/1.1\r\nHost: " + orig + "\r\n"},
		} {
			t.Run(tc.name+"/"+m.mode, func(t *testing.T) {
				got := rawRequest(t, m.addr, m.head+tc.hdr+"\r\n")
				if statusLine(got) != "HTTP/1.1 400 Bad Request" || !strings.Contains(got, tc.want) {
					t.Errorf("answer %q, want 400 saying %q", truncate(got, 300), tc.want)
				}
			})
		}
	}
	if n := len(o.requests()); n != 0 {
		t.Errorf("origin saw %d requests, want none", n)
	}
	// At the bound it passes.
	at := strings.Repeat("b", MaxUserAgentLen)
	if got := e.uaVia(t, "header", o, map[string]string{HeaderUserAgent: at}); got != at {
		t.Errorf("a %d-byte override did not pass (got %d bytes)", MaxUserAgentLen, len(got))
	}
}
