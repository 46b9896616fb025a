package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

func mustAuth(t *testing.T, cfg auth.Config) *auth.Authenticator {
	t.Helper()
	a, err := auth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAuthMatrix runs every case end to end: header-mode requests through
// the agent and a real tinyproxy upstream to an origin. The target is "t1".
func TestAuthMatrix(t *testing.T) {
	const secret = "jwt-secret-for-tests"
	now := time.Now()
	sum := sha256.Sum256([]byte("hashed-key"))
	cfg := auth.Config{
		Enabled:   true,
		JWTSecret: secret,
		APIKeys: []auth.APIKey{
			{Name: "all", Key: "key-all", Targets: []string{"*"}},
			{Name: "named", Key: "key-named", Targets: []string{"t1"}},
			{Name: "other", Key: "key-other", Targets: []string{"other-target"}},
			{Name: "none", Key: "key-none", Targets: []string{}},
			{Name: "hashed", KeyHash: hex.EncodeToString(sum[:]), Targets: []string{"*"}},
		},
		Roles: map[string]auth.Role{
			"t1-reader":    {Permissions: []string{"read"}, Targets: []string{"t1"}},
			"other-reader": {Permissions: []string{"read"}, Targets: []string{"other-target"}},
			"wild-reader":  {Permissions: []string{"read"}, Targets: []string{"*"}},
			"empty-reader": {Permissions: []string{"read"}, Targets: []string{}},
			"no-read":      {Permissions: []string{"write"}, Targets: []string{"*"}},
		},
	}
	jwt := func(role string, exp time.Time, key string) string {
		return auth.SignJWT(key, map[string]any{"sub": "u1", "role": role, "exp": exp.Unix()})
	}
	valid := now.Add(time.Hour)
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{Auth: mustAuth(t, cfg)}})
	off := newEnv(t, envOptions{upstreams: 1})

	cases := []struct {
		name   string
		env    *env
		header string // X-Proxy-Hopper-Auth value; "-" = none
		want   int
	}{
		{"auth disabled, no token", off, "-", 200},
		{"auth disabled, any token", off, "Bearer whatever", 200},
		{"no header", e, "-", 401},
		{"wrong key", e, "Bearer nope", 401},
		{"empty bearer", e, "Bearer ", 401},
		{"garbage bearer", e, "Bearer !!not base64 or a key!!", 401},
		{"not a bearer", e, "Basic a2V5LWFsbA==", 401},
		{"valid key", e, "Bearer key-all", 200},
		{"scheme in lower case", e, "bearer key-all", 200},
		{"scheme in upper case", e, "BEARER key-all", 200},
		{"JWT with exp far away", e, "Bearer " + jwt("admin", now.Add(1000*time.Hour), secret), 401},
		{"wildcard key", e, "Bearer key-all", 200},
		{"named target allowed", e, "Bearer key-named", 200},
		{"named target denied", e, "Bearer key-other", 403},
		{"empty targets list", e, "Bearer key-none", 403},
		{"second of two keys (hash)", e, "Bearer hashed-key", 200},
		{"API key posing as JWT", e, "Bearer " + jwt("admin", valid, "key-all"), 401},
		{"valid JWT", e, "Bearer " + jwt("viewer", valid, secret), 200},
		{"expired JWT", e, "Bearer " + jwt("admin", now.Add(-time.Minute), secret), 401},
		{"JWT with wrong secret", e, "Bearer " + jwt("admin", valid, "other-secret"), 401},
		{"JWT without expiry", e, "Bearer " + auth.SignJWT(secret, map[string]any{"role": "admin"}), 401},
		{"unknown role", e, "Bearer " + jwt("nobody", valid, secret), 403},
		{"builtin admin", e, "Bearer " + jwt("admin", valid, secret), 200},
		{"builtin operator", e, "Bearer " + jwt("operator", valid, secret), 200},
		{"custom role allowed", e, "Bearer " + jwt("t1-reader", valid, secret), 200},
		{"custom role denied", e, "Bearer " + jwt("other-reader", valid, secret), 403},
		{"custom role wildcard", e, "Bearer " + jwt("wild-reader", valid, secret), 200},
		{"custom role empty targets", e, "Bearer " + jwt("empty-reader", valid, secret), 403},
		{"custom role without read", e, "Bearer " + jwt("no-read", valid, secret), 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(o.requests())
			req := tc.env.newReq(t, "GET", o.URL, "/a", nil)
			if tc.header != "-" {
				req.Header.Set(HeaderAuth, tc.header)
			}
			resp, body := do(t, tc.env.headerClient(), req)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if ch := resp.Header.Get("WWW-Authenticate"); (tc.want == 401) != strings.HasPrefix(ch, `Bearer realm="proxy-hopper"`) {
				t.Errorf("status %d with WWW-Authenticate %q", resp.StatusCode, ch)
			}
			reached := len(o.requests()) > before
			if reached != (tc.want == 200) {
				t.Errorf("origin reached = %v with status %d", reached, tc.want)
			}
			if tc.want == 403 && !strings.Contains(body, "t1") && !strings.Contains(body, "proxy access") {
				t.Errorf("403 body does not name the target: %s", body)
			}
			if tc.want == 200 {
				last := o.requests()[len(o.requests())-1]
				if last.Header.Get(HeaderAuth) != "" || last.Header.Get("Proxy-Authorization") != "" {
					t.Errorf("auth header reached the origin: %v", last.Header)
				}
			}
		})
	}
	// Refusals are counted by reason.
	reasons := map[string]int{}
	for _, r := range e.requestsN(t, len(cases)-2) {
		reasons[r.AuthReason]++
	}
	for _, want := range []string{auth.ReasonMissing, auth.ReasonInvalid, auth.ReasonExpired, auth.ReasonForbidden, auth.ReasonNoAccess} {
		if reasons[want] == 0 {
			t.Errorf("no request event with auth reason %q: %v", want, reasons)
		}
	}
	// A refusal happens before any IP is taken: no attempt was made for it.
	for _, a := range e.attemptLog() {
		if !a.OK {
			t.Errorf("attempt failure recorded during auth tests: %+v", a)
		}
	}
}

// Explicit-proxy and CONNECT clients authenticate with standard proxy
// credentials: Proxy-Authorization Basic, any user, the key as password.
func TestAuthProxyAuthorization(t *testing.T) {
	o := newOrigin(t, false, nil)
	tlsO := newOrigin(t, true, nil)
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{Auth: mustAuth(t, auth.Config{Enabled: true,
		APIKeys: []auth.APIKey{{Name: "k", Key: "s3cret", Targets: []string{"*"}}}})}})
	client := func(userinfo *url.Userinfo) *http.Client {
		u := &url.URL{Scheme: "http", Host: e.addr, User: userinfo}
		tr := &http.Transport{Proxy: http.ProxyURL(u), TLSClientConfig: caOf(tlsO)}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	// absolute-form
	resp, err := client(url.UserPassword("anyone", "s3cret")).Get(o.URL + "/p")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("absolute-form with key: %v %v", resp, err)
	}
	resp.Body.Close()
	if got := o.requests()[len(o.requests())-1].Header.Get("Proxy-Authorization"); got != "" {
		t.Errorf("Proxy-Authorization reached the origin")
	}
	resp, err = client(url.UserPassword("anyone", "wrong")).Get(o.URL + "/p")
	if err != nil || resp.StatusCode != 407 || resp.Header.Get("Proxy-Authenticate") == "" {
		t.Fatalf("absolute-form with wrong key: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = client(nil).Get(o.URL + "/p")
	if err != nil || resp.StatusCode != 407 {
		t.Fatalf("absolute-form without key: %v %v", resp, err)
	}
	resp.Body.Close()
	// CONNECT
	resp, err = client(url.UserPassword("u", "s3cret")).Get(tlsO.URL + "/t")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT with key: %v %v", resp, err)
	}
	resp.Body.Close()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	host := strings.TrimPrefix(tlsO.URL, "https://")
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", host, host,
		base64.StdEncoding.EncodeToString([]byte("u:bad")))
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil || r.StatusCode != 407 {
		t.Fatalf("CONNECT with wrong key: %v %v", r, err)
	}
}
