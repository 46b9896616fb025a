package proxy

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// TestTargetMatchesIgnoresQueryAndSmuggledHosts is the matching rule: the
// query never takes part, and a host named in the path does not make a
// regex written for that host match another one. (Names here are strings
// only: nothing is resolved.)
func TestTargetMatchesIgnoresQueryAndSmuggledHosts(t *testing.T) {
	cases := []struct {
		regex, key string
		want       bool
	}{
		{`api\.example\.com`, "https://api.example.com/v1/x?q=1", true},
		{`api\.example\.com`, "https://api.example.com", true},
		{`api\.example\.com`, "api.example.com:443", true},
		{`api\.example\.com`, "http://evil.example/?api.example.com", false},
		{`api\.example\.com`, "http://evil.example/x?u=https://api.example.com/", false},
		{`api\.example\.com`, "http://evil.example/api.example.com", false},
		{`api\.example\.com`, "http://evil.example/a/api.example.com/b", false},
		{`api\.example\.com`, "http://evil.example/#api.example.com", false},
		// The host's own name may appear in its path.
		{`api\.example\.com`, "https://api.example.com/mirror/api.example.com", true},
		// proxy-hopper's own example styles.
		{`.*google\.com.*`, "https://www.google.com/search?q=x", true},
		{`.*google\.com.*`, "http://evil.example/google.com", false},
		{`.*google\.com.*`, "http://evil.example/?google.com", false},
		{`.*example\.com/api/.*`, "https://example.com/api/v1", true},
		{`.*example\.com/api/.*`, "https://example.com/web/", false},
		{`.*example\.com/api/.*`, "https://evil.example/example.com/api/v1", false},
		{`^(https?://)?api\.example\.com(:\d+)?(/|$)`, "https://api.example.com/v1", true},
		{`^(https?://)?api\.example\.com(:\d+)?(/|$)`, "api.example.com:443", true},
		{`^(https?://)?api\.example\.com(:\d+)?(/|$)`, "https://api.example.com.evil.example/", false},
		// Catch-alls and scheme rules take any host, path or not.
		{`.*`, "http://evil.example/anything?x", true},
		{`^https://`, "https://evil.example/x/y", true},
		{`^https://`, "http://evil.example/x/y", false},
		// A rule by path alone cannot tell a path from a smuggled host.
		{`/api/v1`, "https://any.example/api/v1", false},
		// The query is never matched, even by a regex that asks for it.
		{`example\.com/search\?q=`, "https://example.com/search?q=x", false},
	}
	for _, tc := range cases {
		tg := &Target{Regex: regexp.MustCompile(tc.regex)}
		if got := tg.matches(tc.key); got != tc.want {
			t.Errorf("regex %q, key %q: matches = %v, want %v", tc.regex, tc.key, got, tc.want)
		}
	}
}

// TestQueryAndPathDoNotWidenACL: a key allowed only target t1, whose
// unanchored regex names origin A's address (as the README's
// api\.example\.com did), cannot reach origin B by naming A in B's query or
// path, in header mode, absolute form or CONNECT; A itself stays reachable.
func TestQueryAndPathDoNotWidenACL(t *testing.T) {
	a := newOrigin(t, false, nil)
	b := newOrigin(t, false, nil)
	aHost := strings.TrimPrefix(a.URL, "http://")
	bHost := strings.TrimPrefix(b.URL, "http://")
	authn := mustAuth(t, auth.Config{Enabled: true, APIKeys: []auth.APIKey{{Name: "k", Key: "key-t1", Targets: []string{"t1"}}}})
	e := newEnv(t, envOptions{upstreams: 1, regex: regexp.QuoteMeta(aHost), opts: Options{Auth: authn}})

	hdr := func(target, path string) (*http.Response, string) {
		req := e.newReq(t, "GET", target, path, nil)
		req.Header.Set(HeaderAuth, "Bearer key-t1")
		return do(t, e.headerClient(), req)
	}
	if resp, body := hdr(a.URL, "/ok"); resp.StatusCode != 200 {
		t.Fatalf("key to its own target: %d %s", resp.StatusCode, body)
	}
	for _, path := range []string{"/?" + aHost, "/x?next=http://" + aHost + "/", "/" + aHost, "/p/" + aHost + "/q"} {
		if resp, body := hdr(b.URL, path); resp.StatusCode == 200 {
			t.Errorf("header mode %s%s: %d %s", b.URL, path, resp.StatusCode, body)
		}
		// The same through the target header's base path.
		if u := b.URL + path; !strings.Contains(path, "?") {
			if resp, body := hdr(u, "/"); resp.StatusCode == 200 {
				t.Errorf("header mode, target %s: %d %s", u, resp.StatusCode, body)
			}
		}
	}
	pu := &url.URL{Scheme: "http", Host: e.addr, User: url.UserPassword("any", "key-t1")}
	tr := &http.Transport{Proxy: http.ProxyURL(pu)}
	defer tr.CloseIdleConnections()
	pc := &http.Client{Transport: tr}
	for _, path := range []string{"/?" + aHost, "/" + aHost} {
		resp, body := do(t, pc, mustReq(t, "GET", b.URL+path))
		if resp.StatusCode == 200 {
			t.Errorf("absolute form %s%s: %d %s", b.URL, path, resp.StatusCode, body)
		}
	}
	if resp, body := do(t, pc, mustReq(t, "GET", a.URL+"/ok")); resp.StatusCode != 200 {
		t.Fatalf("absolute form to its own target: %d %s", resp.StatusCode, body)
	}
	for _, authority := range []string{bHost + "/" + aHost, "x?" + aHost, strings.ReplaceAll(bHost, ":", "/") + "/" + aHost} {
		got := statusLine(rawRequest(t, e.addr, "CONNECT "+authority+" HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic YW55OmtleS10MQ==\r\n\r\n"))
		if !strings.Contains(got, " 400 ") {
			t.Errorf("CONNECT %s: %q, want 400", authority, got)
		}
	}
	if n := len(b.requests()); n != 0 {
		t.Errorf("origin B was reached %d times", n)
	}
	for _, at := range e.attemptLog() {
		if at.Status != 200 {
			t.Errorf("an attempt other than the allowed requests: %+v", at)
		}
	}
}
