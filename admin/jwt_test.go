package admin_test

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/auth"
)

// adminHash is a bcrypt hash (cost 4) of "example".
const adminHash = "$2a$04$EiFxL5Kxo66vcr.4LE/N4OALNhLUWGIL9Wuo/Qbwt7izD1PD6uCtW"

// withAuth gives the admin server auth's tokens and POST /auth/login, as
// the agent does; token says whether server.adminToken is set as well.
func withAuth(t *testing.T, e **auth.Authenticator, withToken bool) func(*admin.Options) {
	return func(o *admin.Options) {
		a, err := auth.New(auth.Config{
			Enabled: true, JWTSecret: "admin-test-secret-0123456789",
			APIKeys: []auth.APIKey{{Name: "scraper", Key: "scraper-key-0123456789", Targets: []string{"*"}}},
			Admins:  []auth.AdminUser{{Username: "root", PasswordHash: adminHash, Role: "admin"}},
			Roles:   map[string]auth.Role{"auditor": {Permissions: []string{"read"}, Targets: []string{}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		*e = a
		o.Auth = a
		o.Login = auth.NewLoginHandler(func() *auth.Authenticator { return a }, auth.LoginOptions{Log: o.Logger})
		if !withToken {
			o.Token = ""
		}
	}
}

// TestAdminJWTRoles: with auth on, the admin API takes the JWTs of POST
// /auth/login and of its roles as proxy-hopper's does: read to look,
// write to change; an API key (proxy only) and a bad token are refused.
func TestAdminJWTRoles(t *testing.T) {
	for _, withToken := range []bool{false, true} {
		t.Run(map[bool]string{false: "no admin token", true: "with admin token"}[withToken], func(t *testing.T) {
			var a *auth.Authenticator
			e := newAuthEnv(t, false, withAuth(t, &a, withToken))
			c := e.client(t, "127.0.0.1")

			// POST /auth/login (form, as OAuth2PasswordRequestForm) issues a JWT.
			resp, body := do(t, c, "POST", e.srv.URL+"/auth/login", "", strings.NewReader(url.Values{"username": {"root"}, "password": {"example"}}.Encode()), "application/x-www-form-urlencoded")
			var tok struct {
				AccessToken string `json:"access_token"`
				TokenType   string `json:"token_type"`
			}
			if err := json.Unmarshal([]byte(body), &tok); resp.StatusCode != 200 || err != nil || tok.TokenType != "bearer" || tok.AccessToken == "" {
				t.Fatalf("login: %d %s", resp.StatusCode, body)
			}
			if resp, body := do(t, c, "POST", e.srv.URL+"/auth/login", "", strings.NewReader("username=root&password=nope"), "application/x-www-form-urlencoded"); resp.StatusCode != 401 || !strings.Contains(body, "Incorrect username or password") {
				t.Fatalf("wrong password: %d %s", resp.StatusCode, body)
			}
			viewer := auth.SignJWT("admin-test-secret-0123456789", map[string]any{"sub": "v", "role": "viewer", "exp": time.Now().Add(time.Hour).Unix()})
			auditor := auth.SignJWT("admin-test-secret-0123456789", map[string]any{"sub": "a", "role": "auditor", "exp": time.Now().Add(time.Hour).Unix()})
			nobody := auth.SignJWT("admin-test-secret-0123456789", map[string]any{"sub": "n", "role": "no-such-role", "exp": time.Now().Add(time.Hour).Unix()})
			forged := auth.SignJWT("another-secret-0123456789", map[string]any{"sub": "x", "role": "admin", "exp": time.Now().Add(time.Hour).Unix()})
			for _, tc := range []struct {
				method, path, bearer string
				want                 int
				wantBody             string
			}{
				{"GET", "/api/status", tok.AccessToken, 200, `"targets"`},
				{"POST", "/api/targets/web/ips/10.0.0.1:3128/quarantine", tok.AccessToken, 200, ""},
				{"GET", "/api/targets", viewer, 200, `"web"`},
				{"GET", "/api/targets", auditor, 200, `"web"`}, // read, though no proxy targets
				{"POST", "/api/targets/web/ips/10.0.0.1:3128/release", viewer, 403, "Permission 'write' required"},
				{"GET", "/api/targets", nobody, 403, "Permission 'read' required"},
				{"GET", "/api/targets", "scraper-key-0123456789", 403, "Permission 'read' required"},
				{"GET", "/api/targets", forged, 401, "invalid token"},
				{"GET", "/api/targets", "", 401, "missing token"},
				{"GET", "/api/targets", token, map[bool]int{false: 401, true: 200}[withToken], ""},
				{"POST", "/api/targets/web/ips/10.0.0.1:3128/release", token, map[bool]int{false: 401, true: 200}[withToken], ""},
			} {
				resp, body := do(t, c, tc.method, e.srv.URL+tc.path, tc.bearer, nil, "")
				if resp.StatusCode != tc.want || !strings.Contains(body, tc.wantBody) {
					t.Errorf("%s %s (bearer %.12q): %d %.200s, want %d %q", tc.method, tc.path, tc.bearer, resp.StatusCode, body, tc.want, tc.wantBody)
				}
			}
			// A JWT with read logs the page in; one without read does not.
			if resp := login(t, e.client(t, "127.0.0.2"), e.srv.URL, viewer); resp.StatusCode != 303 {
				t.Errorf("page login with a viewer JWT: %d", resp.StatusCode)
			}
			if resp := login(t, e.client(t, "127.0.0.3"), e.srv.URL, nobody); resp.StatusCode != 403 {
				t.Errorf("page login with a role without read: %d", resp.StatusCode)
			}
			if strings.Contains(e.log.String(), tok.AccessToken) || strings.Contains(e.log.String(), "example") {
				t.Errorf("a token or password reached the log:\n%s", e.log)
			}
		})
	}
}

// TestAdminOpenReadOnly: with neither server.adminToken nor auth, the API
// starts (as proxy-hopper's, which let anyone in) but is open to read
// only; changes are refused with what to set, and there is no login.
func TestAdminOpenReadOnly(t *testing.T) {
	e := newAuthEnv(t, false, func(o *admin.Options) { o.Token = "" })
	c := e.client(t, "127.0.0.1")
	for _, tc := range []struct {
		method, path, bearer string
		want                 int
		wantBody             string
	}{
		{"GET", "/api/targets", "", 200, `"web"`},
		{"GET", "/api/targets", "anything", 200, `"web"`},
		{"GET", "/", "", 200, "<html"},
		{"GET", "/readyz", "", 200, `"ready": true`},
		{"POST", "/api/targets/web/ips/10.0.0.1:3128/quarantine", "", 403, "set server.adminToken"},
		{"DELETE", "/api/targets/web/ips/10.0.0.1:3128", "anything", 403, "open to read only"},
		{"POST", "/auth/login", "", 404, "Local authentication is not configured"},
	} {
		resp, body := do(t, c, tc.method, e.srv.URL+tc.path, tc.bearer, nil, "")
		if resp.StatusCode != tc.want || !strings.Contains(body, tc.wantBody) {
			t.Errorf("%s %s: %d %.200s, want %d %q", tc.method, tc.path, resp.StatusCode, body, tc.want, tc.wantBody)
		}
	}
}
