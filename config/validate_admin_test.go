package config

import (
	"strings"
	"testing"
	"time"
)

func TestAdminConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		server  string
		env     map[string]string
		flags   map[string]any
		wantErr string // empty: valid
		check   func(t *testing.T, s ServerConfig)
	}{
		{name: "off by default", check: func(t *testing.T, s ServerConfig) {
			if s.Admin || s.AdminPort != 8081 || s.AdminHost != "0.0.0.0" || s.AdminToken != "" || s.AdminSessionTTL != Duration(12*time.Hour) {
				t.Errorf("defaults: admin=%v port=%d host=%q token=%q", s.Admin, s.AdminPort, s.AdminHost, s.AdminToken)
			}
		}},
		{name: "port alone does not turn it on", server: "adminPort: 9001", check: func(t *testing.T, s ServerConfig) {
			if s.Admin || s.AdminPort != 9001 {
				t.Errorf("admin=%v port=%d", s.Admin, s.AdminPort)
			}
		}},
		{name: "no token: starts, as proxy-hopper", server: "admin: true", check: func(t *testing.T, s ServerConfig) {
			if !s.Admin || s.AdminToken != "" {
				t.Errorf("admin=%v token=%q", s.Admin, s.AdminToken)
			}
		}},
		{name: "short token", server: "admin: true\n  adminToken: short",
			wantErr: "server: adminToken must be at least 16 characters, got 5"},
		{name: "one repeated character", server: "admin: true\n  adminToken: aaaaaaaaaaaaaaaa",
			wantErr: "server: adminToken must have at least 6 different characters, got 1"},
		{name: "a short pattern repeated", server: "admin: true\n  adminToken: abcabcabcabcabcabcabc",
			wantErr: "server: adminToken must have at least 6 different characters, got 3"},
		{name: "weak metrics token", server: "metrics: true\n  metricsToken: '1111111111111111'",
			wantErr: "server: metricsToken must have at least 6 different characters, got 1"},
		{name: "metrics token", server: "metrics: true\n  metricsToken: 0123456789abcdef\n  metricsHost: 127.0.0.1",
			check: func(t *testing.T, s ServerConfig) {
				if s.MetricsToken != "0123456789abcdef" || s.MetricsHost != "127.0.0.1" {
					t.Errorf("got metricsToken=%q metricsHost=%q", s.MetricsToken, s.MetricsHost)
				}
			}},
		{name: "session ttl", server: "admin: true\n  adminToken: 0123456789abcdef\n  adminSessionTtl: 30s",
			wantErr: "server: adminSessionTtl must be at least 1m, got 30s"},
		{name: "token with a space", server: "admin: true\n  adminToken: 'abcdefgh ijklmnopq'",
			wantErr: "server: adminToken must not contain spaces or control characters"},
		{name: "bad port", server: "admin: true\n  adminToken: 0123456789abcdef\n  adminPort: 70000",
			wantErr: "server: adminPort must be a port from 1 to 65535, got 70000"},
		{name: "yaml", server: "admin: true\n  adminToken: 0123456789abcdef\n  adminPort: 9001\n  adminHost: 127.0.0.1",
			check: func(t *testing.T, s ServerConfig) {
				if !s.Admin || s.AdminToken != "0123456789abcdef" || s.AdminPort != 9001 || s.AdminHost != "127.0.0.1" {
					t.Errorf("got admin=%v token=%q port=%d host=%q", s.Admin, s.AdminToken, s.AdminPort, s.AdminHost)
				}
			}},
		{name: "env", env: map[string]string{
			"PROXY_HOPPER_ADMIN": "true", "PROXY_HOPPER_ADMIN_TOKEN": "from-the-environment",
			"PROXY_HOPPER_ADMIN_PORT": "9002", "PROXY_HOPPER_ADMIN_HOST": "127.0.0.3",
		}, check: func(t *testing.T, s ServerConfig) {
			if !s.Admin || s.AdminToken != "from-the-environment" || s.AdminPort != 9002 || s.AdminHost != "127.0.0.3" {
				t.Errorf("got admin=%v token=%q port=%d host=%q", s.Admin, s.AdminToken, s.AdminPort, s.AdminHost)
			}
		}},
		{name: "yaml beats env, flag beats yaml", server: "admin: true\n  adminPort: 9003",
			env:   map[string]string{"PROXY_HOPPER_ADMIN_TOKEN": "from-the-environment", "PROXY_HOPPER_ADMIN_PORT": "9002"},
			flags: map[string]any{"adminHost": "127.0.0.4"},
			check: func(t *testing.T, s ServerConfig) {
				if s.AdminPort != 9003 || s.AdminHost != "127.0.0.4" || s.AdminToken != "from-the-environment" {
					t.Errorf("got token=%q port=%d host=%q", s.AdminToken, s.AdminPort, s.AdminHost)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			body := minimal
			if tc.server != "" {
				body = "server:\n  " + tc.server + "\n" + minimal
			}
			cfg, err := Load(writeConfig(t, body), tc.flags)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			_, err = cfg.Resolve()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve: %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			tc.check(t, cfg.Server)
		})
	}
}
