package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// e2eAdminHash is a bcrypt hash (cost 4) of "example".
const e2eAdminHash = "$2a$04$EiFxL5Kxo66vcr.4LE/N4OALNhLUWGIL9Wuo/Qbwt7izD1PD6uCtW"

// TestAuthParityEndToEnd runs proxy-hopper's auth-oidc setup for real: no
// server.adminToken and no auth.jwtSecret, a local admin user and a local
// OIDC issuer (discovery and JWKS on loopback). The JWT POST /auth/login
// issues, and the issuer's tokens, work on the proxy and on the admin API
// by role; the issuer rotates its key mid-test.
func TestAuthParityEndToEnd(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	is := testenv.NewOIDCIssuer(t)
	k1, k2 := testenv.RSAKey(t, "k1"), testenv.ECKey(t, "k2")
	is.Serve(k1)
	e := startAdminAgentToken(t, "", "", fmt.Sprintf(`auth:
  enabled: true
  jwtExpiryMinutes: 5
  admin: {username: root, passwordHash: "%s", role: admin}
  oidc: {issuer: "%s", audience: proxy-hopper}
  roles:
    scraper: {permissions: [read], targets: [web]}
%s`, e2eAdminHash, is.Srv.URL, oneTarget(tp.Addr)))

	viaProxy := func(tok string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+e.proxy+"/p", nil)
		req.Header.Set(proxy.HeaderTarget, e.origin.URL)
		if tok != "" {
			req.Header.Set(proxy.HeaderAuth, "Bearer "+tok)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatalf("through the proxy: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	loginAs := func(user, pass string) (int, string) {
		t.Helper()
		resp, err := e.client.PostForm(e.base+"/auth/login", url.Values{"username": {user}, "password": {pass}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var doc struct {
			AccessToken string `json:"access_token"`
			TokenType   string `json:"token_type"`
		}
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &doc); resp.StatusCode == 200 && (err != nil || doc.TokenType != "bearer") {
			t.Fatalf("login answer: %s", b)
		}
		return resp.StatusCode, doc.AccessToken
	}
	oidcTok := func(k *testenv.OIDCKey, extra map[string]any) string {
		c := map[string]any{"iss": is.Srv.URL, "aud": "proxy-hopper", "sub": "svc", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
		for n, v := range extra {
			c[n] = v
		}
		return k.Sign(t, c)
	}

	// The local admin user: POST /auth/login, then its JWT on both ends.
	if code, _ := loginAs("root", "wrong"); code != 401 {
		t.Errorf("login with a wrong password: %d, want 401", code)
	}
	code, local := loginAs("root", "example")
	if code != 200 || local == "" {
		t.Fatalf("login: %d", code)
	}
	if got := viaProxy(""); got != 401 {
		t.Errorf("proxy without a token: %d, want 401", got)
	}
	if got := viaProxy(local); got != 200 {
		t.Errorf("proxy with the login's JWT: %d, want 200", got)
	}
	if code, body := e.call("GET", "/api/targets", local, ""); code != 200 || !strings.Contains(body, `"web"`) {
		t.Errorf("admin GET with the login's JWT: %d %.200s", code, body)
	}
	if code, body := e.call("POST", "/api/targets/web/ips", local, `{"address":"127.0.0.9:3128"}`); code != 201 {
		t.Errorf("admin POST with the login's JWT (role admin): %d %.200s", code, body)
	}

	// OIDC tokens: roles from proxy_hopper_role, viewer when it is absent.
	viewer := oidcTok(k1, map[string]any{"proxy_hopper_role": "viewer"})
	if got := viaProxy(viewer); got != 200 {
		t.Errorf("proxy with an OIDC viewer token: %d, want 200", got)
	}
	if code, _ := e.call("GET", "/api/targets", viewer, ""); code != 200 {
		t.Errorf("admin GET with an OIDC viewer token: %d", code)
	}
	if code, body := e.call("DELETE", "/api/targets/web/ips/127.0.0.9:3128", viewer, ""); code != 403 || !strings.Contains(body, "Permission 'write' required") {
		t.Errorf("admin DELETE with an OIDC viewer token: %d %.200s, want 403", code, body)
	}
	if code, _ := e.call("DELETE", "/api/targets/web/ips/127.0.0.9:3128", oidcTok(k1, map[string]any{"proxy_hopper_role": "operator"}), ""); code != 200 {
		t.Errorf("admin DELETE with an OIDC operator token: %d", code)
	}
	if got := viaProxy(oidcTok(k1, nil)); got != 200 {
		t.Errorf("proxy with an OIDC token without a role (defaultRole viewer): %d", got)
	}
	if got := viaProxy(oidcTok(k1, map[string]any{"aud": "someone-else"})); got != 401 {
		t.Errorf("proxy with an OIDC token for another audience: %d, want 401", got)
	}
	if code, _ := e.call("GET", "/api/targets", oidcTok(k1, map[string]any{"proxy_hopper_role": "scraper"}), ""); code != 200 {
		t.Errorf("admin GET with a custom role that reads: %d", code)
	}
	if code, _ := e.call("GET", "/api/targets", "not-a-token", ""); code != 401 {
		t.Errorf("admin GET with garbage: %d, want 401", code)
	}

	// The issuer rotates to k2 and withdraws k1: k2's tokens are taken
	// once the agent refetches (at most one fetch per 10 s), k1's no longer.
	is.Serve(k2)
	next := oidcTok(k2, map[string]any{"proxy_hopper_role": "viewer"})
	testenv.Eventually(t, 20*time.Second, func() error {
		if got := viaProxy(next); got != 200 {
			return fmt.Errorf("proxy with a token of the rotated key: %d", got)
		}
		return nil
	})
	if got := viaProxy(viewer); got != 401 {
		t.Errorf("proxy with a token of the withdrawn key: %d, want 401", got)
	}
	// The local JWT still works: OIDC and the login's tokens live side by side.
	if got := viaProxy(local); got != 200 {
		t.Errorf("proxy with the login's JWT after the rotation: %d", got)
	}
}

// TestAdminOpenWithoutAuth: server.admin without adminToken and without
// auth starts (proxy-hopper's Helm admin.enabled path), reads, and refuses
// changes with what to set.
func TestAdminOpenWithoutAuth(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	e := startAdminAgentToken(t, "", "", oneTarget(tp.Addr))
	if code, body := e.call("GET", "/api/targets", "", ""); code != 200 || !strings.Contains(body, `"web"`) {
		t.Errorf("GET: %d %.200s", code, body)
	}
	if code, body := e.call("POST", "/api/targets/web/ips", "", `{"address":"127.0.0.9:3128"}`); code != 403 || !strings.Contains(body, "set server.adminToken") {
		t.Errorf("POST: %d %.200s, want 403", code, body)
	}
	if code, _ := e.call("POST", "/auth/login", "", ""); code != 404 {
		t.Errorf("POST /auth/login without auth.admin: %d, want 404", code)
	}
	if got := e.fetch("/x"); got != 200 {
		t.Errorf("proxy: %d", got)
	}
}
