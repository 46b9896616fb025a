package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestProxyHopperExamplesRun starts an agent on each of proxy-hopper's
// example configs (config/testdata/proxy-hopper) unchanged, as a
// deployment would: addresses moved to loopback with the run flags' keys,
// the prober off (its URLs need DNS), and the placeholder admin hash
// replaced through PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH. Each serves the
// proxy, and its admin API when on, with the example's auth: the API
// keys and the JWT of POST /auth/login pass the boundary, no token does
// not. The upstreams (documentation addresses) are unreachable here, so
// requests end in 502/503 after the boundary.
func TestProxyHopperExamplesRun(t *testing.T) {
	testenv.RequireIsolated(t, "the examples' upstreams are documentation addresses (203.0.113.0/24), dialled for each request")
	files, err := filepath.Glob("../config/testdata/proxy-hopper/*.yaml")
	if err != nil || len(files) < 10 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			clearEnv(t)
			adminPort := testenv.FreePort(t, "127.0.0.1")
			over := map[string]any{"host": "127.0.0.1", "adminHost": "127.0.0.1", "adminPort": fmt.Sprint(adminPort),
				"metricsHost": "127.0.0.1", "metricsPort": fmt.Sprint(testenv.FreePort(t, "127.0.0.1")), "probe": false}
			cfg, err := config.Load(f, over)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Auth.Admin != nil {
				t.Setenv("PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH", e2eAdminHash)
				if cfg, err = config.Load(f, over); err != nil {
					t.Fatal(err)
				}
			}
			res, err := cfg.Resolve()
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			a, err := New(context.Background(), res, Options{Listener: ln, Logger: discard()})
			if err != nil {
				ln.Close()
				t.Fatalf("New: %v", err)
			}
			defer runInBackground(t, a)()
			client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{}}
			get := func(tok string) int {
				t.Helper()
				req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
				req.Header.Set(proxy.HeaderTarget, "http://192.0.2.10/")
				if tok != "" {
					req.Header.Set(proxy.HeaderAuth, "Bearer "+tok)
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("request: %v", err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			admin := "http://" + net.JoinHostPort("127.0.0.1", fmt.Sprint(adminPort))
			if cfg.Server.Admin {
				testenv.Eventually(t, 5*time.Second, func() error {
					if a.AdminAddr() == nil {
						return errors.New("admin not listening yet")
					}
					return nil
				})
				resp, err := client.Get(admin + "/healthz")
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("admin /healthz: %v %v", resp, err)
				}
				resp.Body.Close()
			}
			if !cfg.Auth.Enabled {
				if code := get(""); code == 401 || code == 407 || code == 0 {
					t.Errorf("request without auth: %d", code)
				}
				return
			}
			if code := get(""); code != 401 {
				t.Errorf("request without a token: %d, want 401", code)
			}
			for _, k := range cfg.Auth.APIKeys {
				if code := get(k.Key); code == 401 || code == 407 {
					t.Errorf("request with API key %s: %d", k.Name, code)
				}
			}
			if cfg.Auth.Admin != nil && cfg.Server.Admin {
				resp, err := client.PostForm(admin+"/auth/login", url.Values{"username": {cfg.Auth.Admin.Username}, "password": {"example"}})
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var doc struct {
					AccessToken string `json:"access_token"`
				}
				_ = json.Unmarshal(b, &doc)
				tok := doc.AccessToken
				if resp.StatusCode != 200 || tok == "" {
					t.Fatalf("login: %d %s", resp.StatusCode, b)
				}
				if code := get(tok); code == 401 || code == 407 {
					t.Errorf("request with the login's JWT: %d", code)
				}
				req, _ := http.NewRequest("GET", admin+"/api/targets", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if resp, err := client.Do(req); err != nil || resp.StatusCode != 200 {
					t.Errorf("admin API with the login's JWT: %v %v", resp, err)
				} else {
					resp.Body.Close()
				}
			}
		})
	}
}
