package config

import (
	"strings"
	"testing"
)

// TestAuthNotes: validate says what a JWT without a role claim reaches
// (auth.defaultRole) and warns about an open /metrics; a defaultRole that
// is no role (other than none) is refused.
func TestAuthNotes(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		name, yaml string
		want       []string
		wantErr    string
	}{
		{name: "auth off", yaml: "", want: nil},
		{name: "default viewer", yaml: "auth:\n  enabled: true\n  jwtSecret: s3cret-s3cret\n",
			want: []string{"a JWT without a role claim gets role 'viewer' (auth.defaultRole): every target"}},
		{name: "custom role", yaml: "auth:\n  enabled: true\n  jwtSecret: s3cret-s3cret\n  defaultRole: reader\n  roles:\n    reader: {permissions: [read], targets: [t]}\n",
			want: []string{"gets role 'reader' (auth.defaultRole): targets t"}},
		{name: "none", yaml: "auth:\n  enabled: true\n  jwtSecret: s3cret-s3cret\n  defaultRole: none\n",
			want: []string{"gets role 'none' (auth.defaultRole): no target"}},
		{name: "no secret", yaml: "auth:\n  enabled: true\n", want: []string{"JWTs are not accepted"}},
		{name: "login without a secret", yaml: "auth:\n  enabled: true\n  admin: {username: a, passwordHash: \"" + exampleHash + "\"}\n",
			want: []string{"signed with a secret made at start-up", "gets role 'viewer'"}},
		{name: "oidc without audience", yaml: "auth:\n  enabled: true\n  oidc: {issuer: \"http://127.0.0.1:1/\"}\n",
			want: []string{"auth.oidc.audience is not set", "gets role 'viewer'"}},
		{name: "oidc with audience", yaml: "auth:\n  enabled: true\n  oidc: {issuer: \"http://127.0.0.1:1/\", audience: ph}\n",
			want: []string{"gets role 'viewer'"}},
		{name: "bad hash", yaml: "auth:\n  admin: {username: a, passwordHash: hunter2}\n", wantErr: "auth: admin.passwordHash is not a bcrypt hash"},
		{name: "bad admin role", yaml: "auth:\n  admin: {username: a, passwordHash: \"" + exampleHash + "\", role: boss}\n", wantErr: `auth: admin.role: "boss" is not a role`},
		{name: "issuer not a URL", yaml: "auth:\n  oidc: {issuer: idp.example}\n", wantErr: `auth: oidc.issuer: "idp.example" is not an http(s) URL`},
		{name: "login tokens outlive the limit", yaml: "auth:\n  jwtExpiryMinutes: 120\n  jwtMaxLifetime: 1h\n  admin: {username: a, passwordHash: \"" + exampleHash + "\"}\n",
			wantErr: "auth: jwtExpiryMinutes (120) is longer than jwtMaxLifetime (1h0m0s)"},
		{name: "admin with auth", yaml: "auth:\n  enabled: true\n  apiKeys: [{name: k, key: kkkkkkkkkkkkkkkk}]\nserver:\n  admin: true\n  adminHost: 127.0.0.1\n",
			want: []string{"JWTs are not accepted", "admin API on 127.0.0.1:8081: a JWT whose role has read"}},
		{name: "admin with auth and a token", yaml: "auth:\n  enabled: true\n  jwtSecret: s3cret-s3cret\nserver:\n  admin: true\n  adminToken: 0123456789abcdef\n",
			want: []string{"gets role 'viewer'", "server.adminToken, or a JWT"}},
		{name: "open admin", yaml: "server:\n  admin: true\n", want: []string{"admin API on 0.0.0.0:8081 is open to read for whoever reaches it, and refuses changes"}},
		{name: "admin with a token only", yaml: "server:\n  admin: true\n  adminToken: 0123456789abcdef\n", want: nil},
		{name: "typo", yaml: "auth:\n  enabled: true\n  defaultRole: veiwer\n", wantErr: `auth: defaultRole: "veiwer" is not a role`},
		{name: "open metrics", yaml: "server:\n  metrics: true\n  metricsHost: 127.0.0.1\n",
			want: []string{"/metrics on 127.0.0.1:9090 has no server.metricsToken"}},
		{name: "metrics with a token", yaml: "server:\n  metrics: true\n  metricsToken: 0123456789abcdef\n", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(writeConfig(t, tc.yaml+minimal), nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cfg.Resolve()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve: %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			notes := cfg.AuthNotes()
			if len(notes) != len(tc.want) {
				t.Fatalf("notes %q, want %q", notes, tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(notes[i], w) {
					t.Errorf("note %q, want %q", notes[i], w)
				}
			}
		})
	}
}

// TestJWTConfig: the new auth keys reach the authenticator from the YAML
// and the environment.
func TestJWTConfig(t *testing.T) {
	clearEnv(t)
	t.Setenv("PROXY_HOPPER_AUTH_JWT_AUDIENCE", "from-env")
	cfg, err := Load(writeConfig(t, "auth:\n  enabled: true\n  jwtSecret: s\n  jwtIssuer: https://idp.invalid/\n  jwtMaxLifetime: 2h\n"+minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Auth
	if a.JWTIssuer != "https://idp.invalid/" || a.JWTAudience != "from-env" || a.JWTMaxLifetime.String() != "2h0m0s" || a.DefaultRole != "viewer" {
		t.Fatalf("auth config: %+v", a)
	}
	cfg, err = Load(writeConfig(t, "auth:\n  jwtMaxLifetime: 10s\n"+minimal), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resolve(); err == nil || !strings.Contains(err.Error(), "auth: jwtMaxLifetime must be at least 1m") {
		t.Fatalf("Resolve: %v", err)
	}
}
