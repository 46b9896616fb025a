package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// clearEnv hides every PROXY_HOPPER_* variable of the test process (an
// empty value counts as unset).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(strings.ToUpper(k), EnvPrefix) {
			t.Setenv(k, "")
		}
	}
}

// writeConfig writes body to config.yaml in a fresh directory.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func loadString(t *testing.T, body string, overrides map[string]any) (*Config, error) {
	t.Helper()
	return Load(writeConfig(t, body), overrides)
}

func mustLoad(t *testing.T, body string, overrides map[string]any) *Config {
	t.Helper()
	cfg, err := loadString(t, body, overrides)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

// targetsOf resolves cfg and returns its targets.
func targetsOf(cfg *Config) ([]ResolvedTarget, error) {
	r, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	return r.Targets, nil
}

func mustResolve(t *testing.T, body string) (*Config, []ResolvedTarget) {
	t.Helper()
	cfg := mustLoad(t, body, nil)
	targets, err := targetsOf(cfg)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	return cfg, targets
}

// problemsOf returns the problems of a *ValidationError, failing otherwise.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %T: %v", err, err)
	}
	if got := strings.Join(ve.Problems, "\n"); ve.Error() != got {
		t.Errorf("Error() = %q, want the problems one per line", ve.Error())
	}
	return ve.Problems
}

// loadAndResolve returns the problems of Load, or else of Resolve.
func loadAndResolve(t *testing.T, body string) []string {
	t.Helper()
	cfg, err := loadString(t, body, nil)
	if err == nil {
		_, err = cfg.Resolve()
	}
	if err == nil {
		t.Fatalf("config loaded and resolved; want problems:\n%s", body)
	}
	return problemsOf(t, err)
}

func addrs(ips []ResolvedIP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.Addr()
	}
	return out
}

const minimal = `
targets:
  - name: t
    regex: 'example\.com'
    ipList: ["10.0.0.1:3128"]
`

// TestProxyHopperExamples loads every example config of proxy-hopper
// unchanged and compares `validate` output with the golden file.
func TestProxyHopperExamples(t *testing.T) {
	clearEnv(t)
	files, err := filepath.Glob("testdata/proxy-hopper/*.yaml")
	if err != nil || len(files) < 10 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			giveAdminToken(cfg)
			targets, err := targetsOf(cfg)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			got := cfg.Summary(targets)
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Summary:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// giveAdminToken fills what the examples leave for the deployer: their
// auth.admin.passwordHash is a placeholder ("$2b$12$REPLACE_ME_RUN_…"),
// which validation refuses (TestExamplePlaceholderHash) and a deployment
// replaces with `proxy-hopper hash-password` output. (The admin API no
// longer needs server.adminToken: auth's JWTs guard it, as proxy-hopper.)
func giveAdminToken(cfg *Config) {
	if a := cfg.Auth.Admin; a != nil && strings.Contains(a.PasswordHash, "REPLACE_ME") {
		a.PasswordHash = exampleHash
	}
}

// exampleHash is a bcrypt hash (cost 4) of "example".
const exampleHash = "$2a$04$EiFxL5Kxo66vcr.4LE/N4OALNhLUWGIL9Wuo/Qbwt7izD1PD6uCtW"

// TestExamplePlaceholderHash: an example used verbatim fails validation
// with what to do about its placeholder hash, never echoing it.
func TestExamplePlaceholderHash(t *testing.T) {
	clearEnv(t)
	for _, name := range []string{"compose-auth-api-keys.yaml", "compose-auth-oidc.yaml"} {
		cfg, err := Load(filepath.Join("testdata/proxy-hopper", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cfg.Resolve()
		if err == nil || !strings.Contains(err.Error(), "auth: admin.passwordHash is not a bcrypt hash: replace it with the output of `proxy-hopper hash-password`") ||
			strings.Contains(err.Error(), "REPLACE_ME") {
			t.Errorf("%s: Resolve: %v", name, err)
		}
	}
}

func TestProxyHopperExampleValues(t *testing.T) {
	clearEnv(t)
	resolve := func(t *testing.T, name string) (*Config, []ResolvedTarget) {
		cfg, err := Load(filepath.Join("testdata/proxy-hopper", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		giveAdminToken(cfg)
		targets, err := targetsOf(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return cfg, targets
	}

	t.Run("conftest sample", func(t *testing.T) {
		_, ts := resolve(t, "conftest-sample.yaml")
		want := poolConfig(time.Second, 10*time.Second, 5, 60*time.Second)
		if ts[0].Name != "example" || ts[0].Pool != want || ts[0].NumRetries != 3 {
			t.Errorf("target = %+v", ts[0])
		}
		if got := addrs(ts[0].IPs); !slices.Equal(got, []string{"10.0.0.1:3128", "10.0.0.2:8080"}) {
			t.Errorf("IPs = %v", got)
		}
		if ts[0].IPs[0].Provider != "test-provider" || ts[0].TLS != nil {
			t.Errorf("IP = %+v, TLS %v", ts[0].IPs[0], ts[0].TLS)
		}
	})

	t.Run("snake_case keys of config.example.yaml", func(t *testing.T) {
		cfg, ts := resolve(t, "config.example.yaml")
		g := cfg.Targets[0]
		if g.MinRequestInterval.D() != 2*time.Second || g.NumRetries != 5 || g.QuarantineTime.D() != 120*time.Second || g.DefaultProxyPort != 8080 {
			t.Errorf("google-maps = %+v", g)
		}
		if got := addrs(ts[0].IPs); !slices.Equal(got, []string{"123.123.123.123:8080", "124.124.124.124:3128"}) {
			t.Errorf("IPs = %v", got)
		}
		if ts[1].Pool.MaxQueueWait != 15*time.Second || ts[1].Pool.FailuresUntilQuarantine != 3 {
			t.Errorf("example-api pool = %+v", ts[1].Pool)
		}
	})

	t.Run("identity of the quick start", func(t *testing.T) {
		cfg, ts := resolve(t, "readme-quickstart.yaml")
		id := cfg.Targets[0].Identity
		if !id.Enabled || !*id.Cookies || id.RotateAfterRequests != 100 || !*id.RotateOn429 || id.Warmup == nil || !*id.Warmup.Enabled || id.Warmup.Path != "/" {
			t.Errorf("identity = %+v warmup %+v", id, id.Warmup)
		}
		ip := ts[0].IPs[0]
		if ip.Username != "user" || ip.Password != "secret" || ip.Region != "US-East" || ip.Provider != "my-provider" {
			t.Errorf("IP = %+v", ip)
		}
	})

	t.Run("auth and admin of the api-keys example", func(t *testing.T) {
		cfg, ts := resolve(t, "compose-auth-api-keys.yaml")
		a := cfg.Auth
		if !a.Enabled || a.JWTExpiryMinutes != 60 || a.Admin == nil || a.Admin.Username != "admin" || a.Admin.Role != "admin" || len(a.APIKeys) != 2 {
			t.Fatalf("auth = %+v", a)
		}
		if !slices.Equal(a.APIKeys[0].Targets, []string{"*"}) || !slices.Equal(a.APIKeys[1].Targets, []string{"general"}) {
			t.Errorf("apiKeys = %+v", a.APIKeys)
		}
		if !cfg.Server.Admin || cfg.Server.AdminPort != 8081 {
			t.Errorf("server = %+v", cfg.Server)
		}
		if got := addrs(ts[0].IPs); got[0] != "203.0.113.10:3128" {
			t.Errorf("IPs = %v", got)
		}
	})

	t.Run("oidc", func(t *testing.T) {
		cfg, _ := resolve(t, "compose-auth-oidc.yaml")
		if o := cfg.Auth.OIDC; o == nil || o.Audience != "proxy-hopper" || o.RolesClaim != "proxy_hopper_role" || !strings.HasPrefix(o.Issuer, "https://") {
			t.Errorf("oidc = %+v", o)
		}
	})

	t.Run("main branch pools with ipList", func(t *testing.T) {
		_, ts := resolve(t, "main-readme-config.yaml")
		if got := addrs(ts[0].IPs); !slices.Equal(got, []string{"10.0.0.1:3128", "10.0.0.2:3128", "10.0.0.3:3128"}) {
			t.Errorf("IPs = %v", got)
		}
		if ts[0].IPs[0].Provider != "" || ts[0].IPs[0].Username != "" {
			t.Errorf("inline IP = %+v", ts[0].IPs[0])
		}
	})
}

// poolConfig is a pool policy with the default maxQueueLength (500).
func poolConfig(interval, wait time.Duration, failures int, quarantine time.Duration) pool.Config {
	return pool.Config{MinRequestInterval: interval, MaxQueueWait: wait, FailuresUntilQuarantine: failures, QuarantineTime: quarantine, MaxQueueLength: 500}
}

func TestDefaults(t *testing.T) {
	clearEnv(t)
	cfg, ts := mustResolve(t, minimal)

	want := ServerConfig{
		Host: "0.0.0.0", Port: 8080, LogLevel: "INFO", LogFormat: "text", Backend: "memory",
		RedisURL: "redis://localhost:6379/0", Metrics: false, MetricsPort: 9090,
		Probe: true, ProbeInterval: Duration(60 * time.Second), ProbeTimeout: Duration(10 * time.Second),
		ProbeURLs: []string{"http://1.1.1.1", "http://www.google.com"},
		Admin:     false, AdminPort: 8081, AdminHost: "0.0.0.0",
		ConnectTimeout: Duration(10 * time.Second), IdleTimeout: Duration(120 * time.Second),
		HeaderTimeout: Duration(10 * time.Second), MaxBodySize: 1 << 30, RetryBufferSize: 1 << 20,
		ShutdownTimeout: Duration(30 * time.Second), TunnelIdleTimeout: Duration(10 * time.Minute),
		RedisKeyPrefix: "ph:", RedisLeaseTTL: Duration(30 * time.Second),
		AdminSessionTTL: Duration(12 * time.Hour),
		MetricsTagLimit: 100, RequestLogBurst: 10, RequestLogInterval: Duration(time.Minute),
		DenyDestinations: []string{"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "100.100.100.200", "168.63.129.16",
			"::/128", "::1/128", "fe80::/10", "fd00:ec2::254", "localhost", "metadata.google.internal"},
		AllowDestinations:       []string{},
		MaxConnectionsPerClient: 4096, FdReserve: 256,
		MaxClientRequests: 512, MaxClientTunnels: 256,
	}
	if !reflect.DeepEqual(cfg.Server, want) {
		t.Errorf("server =\n%+v\nwant\n%+v", cfg.Server, want)
	}
	if !reflect.DeepEqual(DefaultServerConfig(), want) {
		t.Errorf("DefaultServerConfig() = %+v", DefaultServerConfig())
	}

	tc := cfg.Targets[0]
	if tc.DefaultProxyPort != 8080 || tc.MinRequestInterval.D() != time.Second || tc.MaxQueueWait.D() != 30*time.Second ||
		tc.NumRetries != 3 || tc.IPFailuresUntilQuarantine != 5 || tc.QuarantineTime.D() != 120*time.Second {
		t.Errorf("target = %+v", tc)
	}
	for name, b := range map[string]*bool{"spoofUserAgent": tc.SpoofUserAgent, "mutable": tc.Mutable, "static": tc.Static,
		"identity.cookies": tc.Identity.Cookies, "identity.rotateOn429": tc.Identity.RotateOn429} {
		if b == nil || !*b {
			t.Errorf("%s = %v, want true", name, b)
		}
	}
	if !ts[0].SpoofUserAgent {
		t.Errorf("resolved target: SpoofUserAgent false, want proxy-hopper's default true")
	}
	if tc.Identity.Enabled || tc.Identity.Warmup != nil || tc.Identity.RotateAfterRequests != 0 {
		t.Errorf("identity = %+v", tc.Identity)
	}
	if cfg.Auth.Enabled || cfg.Auth.JWTExpiryMinutes != 60 || cfg.Auth.Admin != nil || cfg.Auth.OIDC != nil {
		t.Errorf("auth = %+v", cfg.Auth)
	}
	if ts[0].NumRetries != 3 || ts[0].MaxClientRetries != 3 || ts[0].Pool != poolConfig(time.Second, 30*time.Second, 5, 120*time.Second) {
		t.Errorf("resolved = %+v", ts[0])
	}

	t.Run("nested defaults", func(t *testing.T) {
		cfg := mustLoad(t, `
auth:
  admin: {username: a, passwordHash: h}
  oidc: {issuer: "https://idp"}
  apiKeys: [{name: k, key: v}]
  roles:
    Scraper: {permissions: [read]}
proxyProviders:
  - name: p
    ipList: [a]
ipPools:
  - name: q
    ipRequests: [{provider: p, count: 1}]
targets:
  - name: t
    regex: x
    ipPool: q
    identity: {warmup: {}}
`, nil)
		a := cfg.Auth
		if a.Admin.Role != "admin" || a.OIDC.RolesClaim != "proxy_hopper_role" || !slices.Equal(a.APIKeys[0].Targets, []string{"*"}) {
			t.Errorf("auth = %+v %+v %+v", a.Admin, a.OIDC, a.APIKeys)
		}
		// Role names keep their case (viper would lower-case map keys).
		if r, ok := a.Roles["Scraper"]; !ok || !slices.Equal(r.Targets, []string{"*"}) {
			t.Errorf("roles = %+v", a.Roles)
		}
		p, q := cfg.ProxyProviders[0], cfg.IPPools[0]
		if !*p.Mutable || !*p.Static || !*q.Mutable || !*q.Static {
			t.Errorf("flags: provider %+v pool %+v", p, q)
		}
		if w := cfg.Targets[0].Identity.Warmup; w == nil || !*w.Enabled || w.Path != "/" {
			t.Errorf("warmup = %+v", w)
		}
	})

}

func TestPrecedence(t *testing.T) {
	type c struct {
		name      string
		env       map[string]string
		yaml      string // lines of the server block
		overrides map[string]any
		check     func(s ServerConfig) bool
	}
	cases := []c{
		{"default", nil, "", nil, func(s ServerConfig) bool { return s.Port == 8080 }},
		{"env over default", map[string]string{"PROXY_HOPPER_PORT": "7777"}, "", nil, func(s ServerConfig) bool { return s.Port == 7777 }},
		{"yaml over env", map[string]string{"PROXY_HOPPER_PORT": "5555"}, "port: 9000", nil, func(s ServerConfig) bool { return s.Port == 9000 }},
		{"snake yaml over env", map[string]string{"PROXY_HOPPER_LOG_LEVEL": "ERROR"}, "log_level: debug", nil, func(s ServerConfig) bool { return s.LogLevel == "DEBUG" }},
		{"flag over yaml and env", map[string]string{"PROXY_HOPPER_PORT": "5555"}, "port: 9000", map[string]any{"port": "9100"}, func(s ServerConfig) bool { return s.Port == 9100 }},
		{"flag over default", nil, "", map[string]any{"logLevel": "DEBUG", "metrics": true}, func(s ServerConfig) bool { return s.LogLevel == "DEBUG" && s.Metrics }},
		{"flag false over yaml true", nil, "probe: true", map[string]any{"probe": false}, func(s ServerConfig) bool { return !s.Probe }},
		{"empty env is unset", map[string]string{"PROXY_HOPPER_PORT": ""}, "", nil, func(s ServerConfig) bool { return s.Port == 8080 }},
		{"env name case-insensitive", map[string]string{"proxy_hopper_metrics_port": "9191"}, "", nil, func(s ServerConfig) bool { return s.MetricsPort == 9191 }},
		{"env probe urls comma-separated", map[string]string{"PROXY_HOPPER_PROBE_URLS": "https://a.example, ,https://b.example"}, "", nil,
			func(s ServerConfig) bool {
				return slices.Equal(s.ProbeURLs, []string{"https://a.example", "https://b.example"})
			}},
		{"yaml probe urls over env", map[string]string{"PROXY_HOPPER_PROBE_URLS": "https://a.example"}, "probeUrls: [https://1.1.1.1, https://8.8.8.8]", nil,
			func(s ServerConfig) bool {
				return slices.Equal(s.ProbeURLs, []string{"https://1.1.1.1", "https://8.8.8.8"})
			}},
		{"flag probe urls", nil, "", map[string]any{"probeUrls": []string{"http://x.example"}},
			func(s ServerConfig) bool { return slices.Equal(s.ProbeURLs, []string{"http://x.example"}) }},
		{"flag probe urls as one string", nil, "", map[string]any{"probeUrls": "http://x.example,http://y.example"},
			func(s ServerConfig) bool { return len(s.ProbeURLs) == 2 }},
		{"env durations in seconds", map[string]string{"PROXY_HOPPER_PROBE_INTERVAL": "30", "PROXY_HOPPER_PROBE_TIMEOUT": "2.5"}, "", nil,
			func(s ServerConfig) bool {
				return s.ProbeInterval.D() == 30*time.Second && s.ProbeTimeout.D() == 2500*time.Millisecond
			}},
		{"flag duration string", nil, "probeInterval: 2m", map[string]any{"probeInterval": "90s"}, func(s ServerConfig) bool { return s.ProbeInterval.D() == 90*time.Second }},
		{"yaml null is the default, not env", map[string]string{"PROXY_HOPPER_LOG_FILE": "/tmp/x.log"}, "logFile: null", nil, func(s ServerConfig) bool { return s.LogFile == "" }},
		{"env for our keys", map[string]string{"PROXY_HOPPER_MAX_BODY_SIZE": "10MB", "PROXY_HOPPER_SHUTDOWN_TIMEOUT": "5s"}, "", nil,
			func(s ServerConfig) bool {
				return s.MaxBodySize == 10_000_000 && s.ShutdownTimeout.D() == 5*time.Second
			}},
		{"backend and format are normalized", map[string]string{"PROXY_HOPPER_BACKEND": "Redis"}, "logFormat: JSON", nil,
			func(s ServerConfig) bool { return s.Backend == "redis" && s.LogFormat == "json" }},
	}
	for _, b := range []string{"true", "True", "1", "yes", "on", "Y"} {
		cases = append(cases, c{"env metrics " + b, map[string]string{"PROXY_HOPPER_METRICS": b}, "", nil, func(s ServerConfig) bool { return s.Metrics }})
	}
	for _, b := range []string{"false", "0", "no", "OFF"} {
		cases = append(cases, c{"env probe " + b, map[string]string{"PROXY_HOPPER_PROBE": b}, "", nil, func(s ServerConfig) bool { return !s.Probe }})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			body := minimal
			if tc.yaml != "" {
				body = "server:\n  " + tc.yaml + "\n" + minimal
			}
			cfg := mustLoad(t, body, tc.overrides)
			if !tc.check(cfg.Server) {
				t.Errorf("server = %+v", cfg.Server)
			}
		})
	}
}

func TestServerValueErrors(t *testing.T) {
	cases := []struct {
		name      string
		env       map[string]string
		yaml      string
		overrides map[string]any
		want      string
	}{
		{"bad env int", map[string]string{"PROXY_HOPPER_PORT": "eighty"}, "", nil,
			`server: port: want a whole number, got "eighty" (from PROXY_HOPPER_PORT)`},
		{"bad env shadowed by yaml is fine", map[string]string{"PROXY_HOPPER_PORT": "eighty"}, "port: x", nil,
			`server: port: want a whole number, got "x"`},
		{"bad flag", nil, "", map[string]any{"probeInterval": "soon"},
			`server: probeInterval: invalid duration "soon" (want e.g. 500ms, 30s, 5m, 2h, or a number of seconds) (from command-line flag --probe-interval)`},
		{"bad env bool", map[string]string{"PROXY_HOPPER_METRICS": "maybe"}, "", nil,
			`server: metrics: want true or false, got "maybe" (from PROXY_HOPPER_METRICS)`},
		{"unknown flag key", nil, "", map[string]any{"prot": "1"},
			`server: unknown setting "prot" given on the command line (did you mean "port"?)`},
		{"yaml list for a string", nil, "host: [a, b]", nil, `server: host: want a string, got a list (quote it)`},
		{"yaml string for a list", nil, "probeUrls: http://x", nil, `server: probeUrls: want a list, got a string`},
		{"negative duration", nil, "probeTimeout: -5", nil, `server: probeTimeout: duration -5s must not be negative`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			body := minimal
			if tc.yaml != "" {
				body = "server:\n  " + tc.yaml + "\n" + minimal
			}
			_, err := loadString(t, body, tc.overrides)
			if got := problemsOf(t, err); !slices.Equal(got, []string{tc.want}) {
				t.Errorf("problems:\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestAuthEnv(t *testing.T) {
	clearEnv(t)
	t.Setenv("PROXY_HOPPER_AUTH_JWT_SECRET", "from-env")
	t.Setenv("PROXY_HOPPER_AUTH_ENABLED", "yes")
	t.Setenv("PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH", "$2b$12$env")
	t.Setenv("PROXY_HOPPER_AUTH_OIDC_ISSUER", "https://idp.example")
	cfg, _ := mustResolve(t, "auth:\n  jwtSecret: from-yaml\n"+minimal)
	a := cfg.Auth
	if a.JWTSecret != "from-env" || !a.Enabled {
		t.Errorf("auth = %+v", a)
	}
	if a.Admin != nil {
		t.Errorf("admin created from env alone: %+v", a.Admin)
	}
	if a.OIDC == nil || a.OIDC.Issuer != "https://idp.example" {
		t.Errorf("oidc = %+v", a.OIDC)
	}
	cfg = mustLoad(t, "auth:\n  admin: {username: root, passwordHash: yaml}\n"+minimal, nil)
	if cfg.Auth.Admin.PasswordHash != "$2b$12$env" {
		t.Errorf("admin = %+v", cfg.Auth.Admin)
	}

	t.Setenv("PROXY_HOPPER_AUTH_JWT_EXPIRY_MINUTES", "soon")
	_, err := loadString(t, minimal, nil)
	want := `auth: jwtExpiryMinutes: want a whole number, got "soon" (from PROXY_HOPPER_AUTH_JWT_EXPIRY_MINUTES)`
	if got := problemsOf(t, err); !slices.Contains(got, want) {
		t.Errorf("problems %q, want %q", got, want)
	}
}

func TestParseDuration(t *testing.T) {
	good := []struct {
		in   any
		want time.Duration
	}{
		{"500ms", 500 * time.Millisecond},
		{"1s", time.Second},
		{"5m", 5 * time.Minute},
		{"2h", 2 * time.Hour},
		{"1h30m", 90 * time.Minute},
		{"0.5s", 500 * time.Millisecond},
		{"1.5m", 90 * time.Second},
		{" 2m ", 2 * time.Minute},
		{"90", 90 * time.Second},
		{"1.5", 1500 * time.Millisecond},
		{"0", 0},
		{10, 10 * time.Second},
		{1.5, 1500 * time.Millisecond},
		{0.1, 100 * time.Millisecond},
		{uint64(3), 3 * time.Second},
	}
	for _, tc := range good {
		got, err := ParseDuration(tc.in)
		if err != nil || got.D() != tc.want {
			t.Errorf("ParseDuration(%#v) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	bad := map[any]string{
		"-1s":   "must not be negative",
		-1:      "must not be negative",
		-0.5:    "must not be negative",
		"abc":   `invalid duration "abc"`,
		"":      `invalid duration ""`,
		"1d":    `invalid duration "1d"`,
		"5 m":   `invalid duration "5 m"`,
		true:    "want a duration",
		"NaN":   "out of range",
		"1e300": "out of range",
	}
	for in, want := range bad {
		if _, err := ParseDuration(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseDuration(%#v) error = %v, want %q", in, err, want)
		}
	}
}

func TestDurationFields(t *testing.T) {
	clearEnv(t)
	cfg := mustLoad(t, `
targets:
  - name: api
    regex: x
    ipList: [a]
    minRequestInterval: 500ms
    maxQueueWait: 1.5
    quarantineTime: "2.5"
server:
  probeInterval: 5m
  proxyReadTimeout: 45
  connectTimeout: 2s
`, nil)
	tc := cfg.Targets[0]
	if tc.MinRequestInterval.D() != 500*time.Millisecond || tc.MaxQueueWait.D() != 1500*time.Millisecond || tc.QuarantineTime.D() != 2500*time.Millisecond {
		t.Errorf("target durations = %v %v %v", tc.MinRequestInterval, tc.MaxQueueWait, tc.QuarantineTime)
	}
	s := cfg.Server
	if s.ProbeInterval.D() != 5*time.Minute || s.ProxyReadTimeout.D() != 45*time.Second || s.ConnectTimeout.D() != 2*time.Second {
		t.Errorf("server durations = %+v", s)
	}

	got := loadAndResolve(t, `
targets:
  - name: api
    regex: x
    ipList: [a]
    minRequestInterval: soon
    maxQueueWait: -3
    quarantineTime: [1]
`)
	want := []string{
		`targets[0] (api): maxQueueWait: duration -3s must not be negative`,
		`targets[0] (api): minRequestInterval: invalid duration "soon" (want e.g. 500ms, 30s, 5m, 2h, or a number of seconds)`,
		`targets[0] (api): quarantineTime: want a duration (e.g. 30s, 5m, or seconds), got a list`,
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseByteSize(t *testing.T) {
	good := map[any]ByteSize{
		1048576:    1 << 20,
		"1048576":  1 << 20,
		"512KiB":   512 << 10,
		"1MiB":     1 << 20,
		"1 GiB":    1 << 30,
		"1gib":     1 << 30,
		"10MB":     10_000_000,
		"10KB":     10_000,
		"1.5MiB":   3 << 19,
		"2Ki":      2048,
		"7B":       7,
		float64(3): 3,
		0:          0,
	}
	for in, want := range good {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%#v) = %v, %v; want %v", in, got, err, want)
		}
	}
	bad := map[any]string{
		-1:           "must not be negative",
		"-1MiB":      "invalid size",
		"1XB":        `unknown unit "XB"`,
		"MiB":        "invalid size",
		1.5:          "not a whole number",
		"99999999TB": "out of range",
		true:         "want a size",
	}
	for in, want := range bad {
		if _, err := ParseByteSize(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseByteSize(%#v) error = %v, want %q", in, err, want)
		}
	}
	clearEnv(t)
	cfg := mustLoad(t, "server:\n  maxBodySize: 10MB\n  retryBufferSize: 65536\n"+minimal, nil)
	if cfg.Server.MaxBodySize != 10_000_000 || cfg.Server.RetryBufferSize != 65536 {
		t.Errorf("sizes = %d %d", cfg.Server.MaxBodySize, cfg.Server.RetryBufferSize)
	}
}

func TestParseUpstream(t *testing.T) {
	good := []struct {
		in   string
		want upstream
	}{
		{"10.0.0.1", upstream{host: "10.0.0.1"}},
		{"10.0.0.1:3128", upstream{host: "10.0.0.1", port: 3128}},
		{" proxy-1.example.com:80 ", upstream{host: "proxy-1.example.com", port: 80}},
		{"[2001:db8::1]:3128", upstream{host: "2001:db8::1", port: 3128}},
		{"[2001:db8::1]", upstream{host: "2001:db8::1"}},
		{"http://10.0.0.1:8080", upstream{host: "10.0.0.1", port: 8080}},
		{"HTTP://proxy.example.com", upstream{host: "proxy.example.com"}},
		{"http://proxy.example.com:3128/", upstream{host: "proxy.example.com", port: 3128}},
		{"http://[::1]:3128", upstream{host: "::1", port: 3128}},
		{"http://user:pass@10.0.0.1:8080", upstream{host: "10.0.0.1", port: 8080, user: "user", pass: "pass", hasCreds: true}},
		{"http://us%3Aer:p%40ss%3Aw%2Frd@10.0.0.1:8080", upstream{host: "10.0.0.1", port: 8080, user: "us:er", pass: "p@ss:w/rd", hasCreds: true}},
		{"http://p@ss@10.0.0.1", upstream{host: "10.0.0.1", user: "p@ss", hasCreds: true}},
		{"http://user@10.0.0.1:1", upstream{host: "10.0.0.1", port: 1, user: "user", hasCreds: true}},
		{"http://:only-pass@10.0.0.1:65535", upstream{host: "10.0.0.1", port: 65535, pass: "only-pass", hasCreds: true}},
	}
	for _, tc := range good {
		got, err := parseUpstream(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseUpstream(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	bad := map[string]string{
		"":                           "empty entry",
		"10.0.0.1:":                  "empty port",
		"10.0.0.1:0":                 "port must be a number from 1 to 65535",
		"10.0.0.1:65536":             "port must be a number from 1 to 65535",
		"10.0.0.1:http":              "port must be a number from 1 to 65535",
		"2001:db8::1":                "an IPv6 address needs brackets",
		"[2001:db8::1":               "missing ]",
		"[10.0.0.1]:80":              "not an IPv6 address in brackets",
		"[::1]80":                    "want [ipv6]:port",
		":8080":                      "missing host",
		"bad host:80":                `"bad host" is not a host name or IP address`,
		"user:secret@10.0.0.1:80":    "credentials are only accepted in the http://user:password@host:port form",
		"https://10.0.0.1:443":       `scheme "https" is not supported`,
		"socks5://10.0.0.1:1080":     `scheme "socks5" is not supported`,
		"http://10.0.0.1:8080/path":  "no path, query or fragment",
		"http://u:p#w@10.0.0.1:8080": "not a valid URL (percent-encode special characters",
		"http://10.0.0.1:99999":      "port must be a number from 1 to 65535",
		"http://:8080":               "missing host",
		"http://user:pass@":          "missing host",
		"http://10.0.0.1:":           "empty port",
		"http://u:p w@10.0.0.1":      "not a valid URL",
		"us:er:pw@x://10.0.0.1":      "not a valid URL",
		"http://[fe80::1%25eth0]:80": "bad IPv6 address",
	}
	for in, want := range bad {
		_, err := parseUpstream(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseUpstream(%q) error = %v, want %q", in, err, want)
		}
	}
}

func TestResolveIPs(t *testing.T) {
	clearEnv(t)
	cfg, ts := mustResolve(t, `
proxyProviders:
  - name: au
    auth: {type: basic, username: au-user, password: au-pass}
    regionTag: Australia
    ipList:
      - "10.0.0.1:3128"
      - "10.0.0.2"
      - "http://own:cred%40s@10.0.0.3:3128"
      - "10.0.0.4:3128"
  - name: ca
    ipList: ["10.1.0.1:3128", "10.1.0.2:3128"]
ipPools:
  - name: shared
    ipRequests:
      - {provider: au, count: 3}
      - {provider: ca, count: 10}
  - name: mixed
    ipRequests: [{provider: ca, count: 1}]
    ipList: ["http://inline:pw@10.2.0.1:8000", "10.2.0.2"]
targets:
  - name: a
    regex: 'a\.com'
    ipPool: shared
    defaultProxyPort: 9999
  - name: b
    regex: 'b\.com'
    ipPool: shared
  - name: c
    regex: 'c\.com'
    pool_name: mixed
  - name: d
    regex: '.*'
    ipList: ["10.3.0.1", "[2001:db8::1]:81"]
    defaultProxyPort: 3129
`)
	// First `count` IPs of each provider, in order; fewer when it has fewer;
	// a bare host takes the target's defaultProxyPort.
	if got := addrs(ts[0].IPs); !slices.Equal(got, []string{"10.0.0.1:3128", "10.0.0.2:9999", "10.0.0.3:3128", "10.1.0.1:3128", "10.1.0.2:3128"}) {
		t.Errorf("a: %v", got)
	}
	if got := addrs(ts[1].IPs); !slices.Equal(got, []string{"10.0.0.1:3128", "10.0.0.2:8080", "10.0.0.3:3128", "10.1.0.1:3128", "10.1.0.2:3128"}) {
		t.Errorf("b: %v", got)
	}
	// Provider auth applies to its IPs; credentials in the URL win.
	want := []ResolvedIP{
		{Host: "10.0.0.1", Port: 3128, Username: "au-user", Password: "au-pass", Provider: "au", Region: "Australia"},
		{Host: "10.0.0.2", Port: 9999, Username: "au-user", Password: "au-pass", Provider: "au", Region: "Australia"},
		{Host: "10.0.0.3", Port: 3128, Username: "own", Password: "cred@s", Provider: "au", Region: "Australia"},
		{Host: "10.1.0.1", Port: 3128, Provider: "ca"},
		{Host: "10.1.0.2", Port: 3128, Provider: "ca"},
	}
	if !reflect.DeepEqual(ts[0].IPs, want) {
		t.Errorf("a IPs:\n%+v\nwant\n%+v", ts[0].IPs, want)
	}
	// Each target owns its list.
	ts[0].IPs[0].Host = "changed"
	if ts[1].IPs[0].Host != "10.0.0.1" {
		t.Error("targets share their IP slice")
	}
	wantC := []ResolvedIP{
		{Host: "10.1.0.1", Port: 3128, Provider: "ca"},
		{Host: "10.2.0.1", Port: 8000, Username: "inline", Password: "pw"},
		{Host: "10.2.0.2", Port: 8080},
	}
	if !reflect.DeepEqual(ts[2].IPs, wantC) {
		t.Errorf("c IPs:\n%+v\nwant\n%+v", ts[2].IPs, wantC)
	}
	if got := addrs(ts[3].IPs); !slices.Equal(got, []string{"10.3.0.1:3129", "[2001:db8::1]:81"}) {
		t.Errorf("d: %v", got)
	}
	if cfg.Targets[2].IPPool != "mixed" {
		t.Errorf("pool_name alias: %+v", cfg.Targets[2])
	}
	for i, re := range []string{"https://x.a.com/p", "http://b.com", "c.com:443", "anything"} {
		if !ts[i].Regex.MatchString(re) {
			t.Errorf("%s does not match %q (regexes are unanchored)", ts[i].Name, re)
		}
	}
}

func TestValidationErrors(t *testing.T) {
	const provider = "proxyProviders:\n  - name: p\n    ipList: [\"10.0.0.1:3128\"]\n"
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"missing name and regex", "targets:\n  - ipList: [a]\n",
			[]string{"targets[0]: name is required", "targets[0]: regex is required"}},
		{"duplicate target names", "targets:\n  - {name: t, regex: a, ipList: [a]}\n  - {name: t, regex: b, ipList: [b]}\n",
			[]string{`targets[1] (t): name "t" is already used by targets[0]`}},
		{"regex not RE2", "targets:\n  - {name: t, regex: 'foo(?=bar)', ipList: [a]}\n  - {name: u, regex: '(a)\\1', ipList: [a]}\n",
			[]string{
				`targets[0] (t): regex "foo(?=bar)" is not valid RE2 syntax (Go regexp: no lookaround, no backreferences): invalid or unsupported Perl syntax: ` + "`(?=`",
				`targets[1] (u): regex "(a)\\1" is not valid RE2 syntax (Go regexp: no lookaround, no backreferences): invalid escape sequence: ` + "`\\1`",
			}},
		{"neither ipPool nor ipList", "targets:\n  - {name: t, regex: a}\n",
			[]string{"targets[0] (t): needs ipPool or ipList (neither is set)"}},
		{"both ipPool and ipList", provider + "ipPools:\n  - {name: q, ipRequests: [{provider: p, count: 1}]}\ntargets:\n  - {name: t, regex: a, ipPool: q, ipList: [a]}\n",
			[]string{"targets[0] (t): set either ipPool or ipList, not both"}},
		{"unknown ipPool", provider + "ipPools:\n  - {name: q, ipRequests: [{provider: p, count: 1}]}\ntargets:\n  - {name: t, regex: a, ipPool: nope}\n",
			[]string{`targets[0] (t): ipPool "nope" is not defined (defined pools: q)`}},
		{"unknown provider", "ipPools:\n  - {name: q, ipRequests: [{provider: nope, count: 1}]}\ntargets:\n  - {name: t, regex: a, ipPool: q}\n",
			[]string{`ipPools[0] (q): ipRequests[0]: provider "nope" is not defined (defined providers: none)`}},
		{"count below 1", provider + "ipPools:\n  - {name: q, ipRequests: [{provider: p, count: 0}, {provider: p}]}\ntargets:\n  - {name: t, regex: a, ipPool: q}\n",
			[]string{"ipPools[0] (q): ipRequests[0]: count must be at least 1, got 0", "ipPools[0] (q): ipRequests[1]: count must be at least 1, got 0"}},
		{"pool with no IPs", "ipPools:\n  - {name: q}\ntargets:\n  - {name: t, regex: a, ipPool: q}\n",
			[]string{"ipPools[0] (q): needs ipRequests or ipList (it has no IPs)"}},
		{"duplicate pool and provider names", provider + "  - name: p\n    ipList: [b]\nipPools:\n  - {name: q, ipList: [a]}\n  - {name: q, ipList: [b]}\n",
			[]string{`proxyProviders[1] (p): name "p" is already used by proxyProviders[0]`, `ipPools[1] (q): name "q" is already used by ipPools[0]`}},
		{"provider without IPs and bad auth", "proxyProviders:\n  - name: p\n    auth: {type: digest}\n",
			[]string{"proxyProviders[0] (p): ipList is required and must not be empty", `proxyProviders[0] (p): auth.type: "digest" is not supported (want basic)`, "proxyProviders[0] (p): auth.username is required"}},
		{"bad upstream entries", "proxyProviders:\n  - name: p\n    ipList: ['10.0.0.1:x', 'socks5://h:1']\ntargets:\n  - {name: t, regex: a, ipList: ['[::1', 'a b']}\n",
			[]string{
				`proxyProviders[0] (p): ipList[0]: host "10.0.0.1": port must be a number from 1 to 65535`,
				`proxyProviders[0] (p): ipList[1]: scheme "socks5" is not supported: upstream proxies are plain HTTP proxies (http://host:port)`,
				`targets[0] (t): ipList[0]: "[::1": missing ] after an IPv6 address`,
				`targets[0] (t): ipList[1]: "a b" is not a host name or IP address`,
			}},
		{"duplicate address in a target", "targets:\n  - {name: t, regex: a, ipList: ['10.0.0.1:8080', '10.0.0.1'], defaultProxyPort: 8080}\n",
			[]string{"targets[0] (t): address 10.0.0.1:8080 is listed more than once"}},
		{"duplicate address through a pool", provider + "ipPools:\n  - {name: q, ipRequests: [{provider: p, count: 1}, {provider: p, count: 1}]}\ntargets:\n  - {name: t, regex: a, ipPool: q}\n",
			[]string{"targets[0] (t): address 10.0.0.1:3128 is listed more than once"}},
		{"numeric ranges", "targets:\n  - {name: t, regex: a, ipList: [a], numRetries: -1, ipFailuresUntilQuarantine: 0, defaultProxyPort: 70000}\n",
			[]string{"targets[0] (t): numRetries must be 0 or more, got -1", "targets[0] (t): ipFailuresUntilQuarantine must be at least 1, got 0", "targets[0] (t): defaultProxyPort must be a port from 1 to 65535, got 70000"}},
		{"retry and queue caps", "server:\n  maxClientRequests: -1\n  maxClientTunnels: -2\n" +
			"targets:\n  - {name: t, regex: a, ipList: [a], numRetries: 3, maxClientRetries: 2, maxQueueLength: -1}\n  - {name: u, regex: b, ipList: [b], maxClientRetries: 101}\n",
			[]string{
				"server: maxClientRequests must be 0 (no cap) or more, got -1",
				"server: maxClientTunnels must be 0 (no cap) or more, got -2",
				"targets[0] (t): maxClientRetries (2) must not be below numRetries (3): the header can always lower the retries",
				"targets[0] (t): maxQueueLength must not be negative",
				"targets[1] (u): maxClientRetries must be at most 100 (the most X-Proxy-Hopper-Retries can say), got 101",
			}},
		{"server values", "server:\n  logLevel: LOUD\n  logFormat: xml\n  backend: etcd\n  port: 0\n  metricsPort: 65536\n  adminPort: -1\n" + minimal,
			[]string{
				`server: logLevel: "LOUD" is not a level (want TRACE, DEBUG, INFO, WARNING or ERROR)`,
				`server: logFormat: "xml" is not a format (want text or json)`,
				`server: backend: "etcd" is not a backend (want memory or redis)`,
				"server: port must be a port from 1 to 65535, got 0",
				"server: metricsPort must be a port from 1 to 65535, got 65536",
				"server: adminPort must be a port from 1 to 65535, got -1",
			}},
		{"server probe and limits", "server:\n  probeInterval: 0\n  probeUrls: ['ftp://x', 'http://ok']\n  connectTimeout: 0\n  maxBodySize: 0\n  backend: redis\n  redisUrl: 'http://x'\n" + minimal,
			[]string{
				"server: redisUrl: not a redis://, rediss:// or unix:// URL",
				"server: probeInterval must be more than 0 when probe is on",
				"server: probeUrls[0]: not an http:// or https:// URL",
				"server: connectTimeout must be more than 0",
				"server: maxBodySize must be more than 0",
			}},
		{"metrics and log bounds", "server:\n  metricsTagLimit: -1\n  requestLogBurst: 0\n  requestLogInterval: 10ms\n" + minimal,
			[]string{
				"server: metricsTagLimit must be from 0 to 10000, got -1",
				"server: requestLogBurst must be at least 1, got 0",
				"server: requestLogInterval must be at least 1s, got 10ms",
			}},
		{"auth", "auth:\n  jwtExpiryMinutes: 0\n  apiKeys: [{key: k}, {name: n}, {name: b, key: k, keyHash: h}]\n  admin: {role: admin}\n  oidc: {audience: x}\n  roles: {r: {permissions: [read, fly]}}\n" + minimal,
			[]string{
				"auth: jwtExpiryMinutes must be at least 1, got 0",
				"auth: apiKeys[0]: name is required",
				"auth: apiKeys[1] (n): key is required (or keyHash)",
				"auth: apiKeys[2] (b): set key or keyHash, not both",
				`auth: roles.r.permissions: "fly" is not a permission (want read, write or admin)`,
				"auth: admin.username is required",
				"auth: admin.passwordHash is required (proxy-hopper hash-password, or PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH)",
				"auth: oidc.issuer is required",
			}},
		{"identity", "targets:\n  - {name: t, regex: a, ipList: [a], identity: {rotateAfterRequests: -2, warmup: {path: home}}}\n",
			[]string{"targets[0] (t): identity.rotateAfterRequests must be at least 1 (or left out), got -2", "targets[0] (t): identity.warmup.path must start with /"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			got := loadAndResolve(t, tc.yaml)
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestAllProblemsAtOnce: one error lists every problem, across sections.
func TestAllProblemsAtOnce(t *testing.T) {
	clearEnv(t)
	got := loadAndResolve(t, `
server: {logLevel: LOUD}
proxyProviders:
  - {name: p, ipList: ["h:0"]}
ipPools:
  - {name: q, ipRequests: [{provider: r, count: 1}]}
targets:
  - {name: a, regex: "(", ipPool: q}
  - {name: b, regex: ok, ipList: ["h:0"]}
`)
	for _, want := range []string{"server: logLevel", "proxyProviders[0] (p): ipList[0]", "ipPools[0] (q): ipRequests[0]", "targets[0] (a): regex", "targets[1] (b): ipList[0]"} {
		if !slices.ContainsFunc(got, func(p string) bool { return strings.HasPrefix(p, want) }) {
			t.Errorf("no problem starting %q in:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

func TestUnknownKeys(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"target key", "targets:\n  - {name: t, regex: a, ipList: [a]}\n  - {name: api, regx: a, ipList: [a]}\n",
			[]string{`targets[1] (api): unknown key "regx" (did you mean "regex"?)`}},
		{"nested key", "targets:\n  - {name: t, regex: a, ipList: [a], identity: {warmup: {pth: /}}}\n",
			[]string{`targets[0] (t): unknown key "identity.warmup.pth" (did you mean "identity.warmup.path"?)`}},
		{"server key", "server: {prot: 1}\n" + minimal,
			[]string{`server: unknown key "prot" (did you mean "port"?)`}},
		{"wrong case", "server: {LogLevel: INFO}\n" + minimal,
			[]string{`server: unknown key "LogLevel" (did you mean "logLevel"?)`}},
		{"top level", "target: []\nfoo: 1\n" + minimal,
			[]string{`unknown top-level key "foo"`, `unknown top-level key "target" (did you mean "targets"?)`}},
		{"pool request", "ipPools:\n  - {name: q, ipRequests: [{providr: p, count: 1}]}\n" + minimal,
			[]string{`ipPools[0] (q): unknown key "ipRequests[0].providr" (did you mean "ipRequests[0].provider"?)`}},
		{"provider auth", "proxyProviders:\n  - {name: p, ipList: [a], auth: {user: u}}\n" + minimal,
			[]string{`proxyProviders[0] (p): unknown key "auth.user"`}},
		{"auth", "auth: {apiKeys: [{name: k, key: v, target: [x]}], admin: {username: a, password: b}}\n" + minimal,
			[]string{`auth: unknown key "admin.password"`, `auth: unknown key "apiKeys[0].target" (did you mean "apiKeys[0].targets"?)`}},
		{"both spellings", "targets:\n  - {name: t, regex: a, ipList: [a], ip_list: [b]}\n",
			[]string{`targets[0] (t): "ipList" and "ip_list" are the same key; set it once`}},
		{"ipPool aliases together", "targets:\n  - {name: t, regex: a, ipPool: q, poolName: q}\n",
			[]string{`targets[0] (t): "ipPool" and "poolName" are the same key; set it once`}},
		{"wrong shapes", "targets: {name: t}\nproxyProviders: [a]\n",
			[]string{`targets: want a list, got a mapping`, `proxyProviders[0]: want a mapping, got a string`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			_, err := loadString(t, tc.yaml, nil)
			got := problemsOf(t, err)
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func TestSnakeCaseAccepted(t *testing.T) {
	clearEnv(t)
	cfg, ts := mustResolve(t, `
server:
  log_level: debug
  metrics_port: 9999
  probe_urls: [http://x]
  max_body_size: 1KiB
auth:
  api_keys: [{name: k, key_hash: h}]
  jwt_expiry_minutes: 5
  admin: {username: a, password_hash: "$2a$04$EiFxL5Kxo66vcr.4LE/N4OALNhLUWGIL9Wuo/Qbwt7izD1PD6uCtW"}
  oidc: {issuer: "http://127.0.0.1:1/i", roles_claim: r}
proxyProviders:
  - name: p
    ip_list: [a]
    region_tag: EU
ipPools:
  - name: q
    ip_requests: [{provider: p, count: 1}]
targets:
  - name: t
    regex: x
    ip_pool: q
    min_request_interval: 2s
    maxRequestTimeInQueue: 7s
    num_retries: 1
    ip_failures_until_quarantine: 2
    quarantine_time: 3s
    default_proxy_port: 81
    spoof_user_agent: false
    ca_file: ""
    tls_insecure_skip_verify: true
    identity: {rotate_after_requests: 4, rotate_on_429: false, preserve_client_headers: true}
`)
	s, a, tc := cfg.Server, cfg.Auth, cfg.Targets[0]
	if s.LogLevel != "DEBUG" || s.MetricsPort != 9999 || len(s.ProbeURLs) != 1 || s.MaxBodySize != 1024 {
		t.Errorf("server = %+v", s)
	}
	if a.APIKeys[0].KeyHash != "h" || a.JWTExpiryMinutes != 5 || !strings.HasPrefix(a.Admin.PasswordHash, "$2a$04$") || a.OIDC.RolesClaim != "r" {
		t.Errorf("auth = %+v", a)
	}
	if cfg.ProxyProviders[0].RegionTag != "EU" || ts[0].IPs[0].Addr() != "a:81" {
		t.Errorf("provider = %+v, IPs %v", cfg.ProxyProviders[0], ts[0].IPs)
	}
	if tc.MaxQueueWait.D() != 7*time.Second || tc.NumRetries != 1 || tc.IPFailuresUntilQuarantine != 2 || *tc.SpoofUserAgent || ts[0].SpoofUserAgent ||
		!tc.TLSInsecureSkipVerify || tc.Identity.RotateAfterRequests != 4 || *tc.Identity.RotateOn429 || !tc.Identity.PreserveClientHeaders {
		t.Errorf("target = %+v", tc)
	}
}

func TestTypeErrors(t *testing.T) {
	clearEnv(t)
	_, err := loadString(t, `
proxyProviders:
  - name: p
    ipList: [a]
    auth: {username: u, password: 12345}
targets:
  - name: t
    regex: a
    ipList: [a, 8080]
    numRetries: 1.5
    spoofUserAgent: sometimes
    identity: {enabled: [1]}
`, nil)
	want := []string{
		"proxyProviders[0] (p): auth.password: want a string, got a number (quote it)",
		"targets[0] (t): identity.enabled: want true or false, got a list",
		"targets[0] (t): ipList[1]: want a string, got a number (quote it)",
		"targets[0] (t): numRetries: want a whole number, got 1.5",
		`targets[0] (t): spoofUserAgent: want true or false, got "sometimes"`,
	}
	got := problemsOf(t, err)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLoadErrors(t *testing.T) {
	clearEnv(t)
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), nil); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := loadString(t, "targets: [\n", nil); err == nil || !strings.HasPrefix(err.Error(), "parse config ") {
		t.Errorf("bad YAML: %v", err)
	}
	if _, err := loadString(t, "server: {port: 1}\nserver: {port: 2}\n", nil); err == nil {
		t.Error("duplicate key accepted")
	}
	_, err := loadString(t, "- a\n- b\n", nil)
	if got := problemsOf(t, err); len(got) != 1 || !strings.Contains(got[0], "top level must be a mapping") {
		t.Errorf("list document: %v", got)
	}
}

// writeCA writes a self-signed CA certificate as PEM and returns the path.
func writeCA(t *testing.T, dir string) (string, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "proxy-hopper test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, cert
}

func TestTLS(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	caPath, ca := writeCA(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "junk.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "broken.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("xx")}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	write := func(body string) {
		if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`
targets:
  - {name: plain, regex: a, ipList: [a]}
  - {name: ca-abs, regex: a, ipList: [a], caFile: "` + caPath + `"}
  - {name: ca-rel, regex: a, ipList: [a], caFile: ca.pem}
  - {name: insecure, regex: a, ipList: [a], tlsInsecureSkipVerify: true}
`)
	cfg, err := Load(cfgPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := targetsOf(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ts[0].TLS != nil {
		t.Errorf("plain: TLS = %+v, want nil", ts[0].TLS)
	}
	for _, rt := range ts[1:3] {
		if rt.TLS == nil || rt.TLS.RootCAs == nil || rt.TLS.InsecureSkipVerify {
			t.Fatalf("%s: TLS = %+v", rt.Name, rt.TLS)
		}
		// The CA verifies; relative caFile is read next to the config file.
		if _, err := ca.Verify(x509.VerifyOptions{Roots: rt.TLS.RootCAs}); err != nil {
			t.Errorf("%s: CA not trusted: %v", rt.Name, err)
		}
	}
	if ts[3].TLS == nil || !ts[3].TLS.InsecureSkipVerify || ts[3].TLS.RootCAs != nil {
		t.Errorf("insecure: TLS = %+v", ts[3].TLS)
	}

	write(`
targets:
  - {name: missing, regex: a, ipList: [a], caFile: nope.pem}
  - {name: junk, regex: a, ipList: [a], caFile: junk.pem}
  - {name: broken, regex: a, ipList: [a], caFile: broken.pem}
`)
	cfg, err = Load(cfgPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Resolve()
	got := problemsOf(t, err)
	want := []string{
		`targets[0] (missing): caFile "nope.pem": cannot read it: no such file or directory`,
		`targets[1] (junk): caFile "junk.pem": no PEM certificate in it`,
		`targets[2] (broken): caFile "broken.pem": certificate 1: `,
	}
	if len(got) != 3 {
		t.Fatalf("problems: %q", got)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
}

// TestNoCredentialsInErrors: no error or summary shows a password, a key
// or a secret, wherever it was written.
func TestNoCredentialsInErrors(t *testing.T) {
	clearEnv(t)
	t.Setenv("PROXY_HOPPER_REDIS_URL", "redis://:SECRET-redis@host:6379/0")
	t.Setenv("PROXY_HOPPER_AUTH_JWT_EXPIRY_MINUTES", "x")
	secrets := []string{"SECRET", "s3cr3t", "hunter2", "pa%40ss", "pa@ss"}
	body := `
server: {port: 0, backend: redis}
auth:
  jwtSecret: SECRET-jwt
  apiKeys: [{name: k, key: SECRET-key, keyHash: SECRET-hash}]
  admin: {passwordHash: SECRET-hash}
proxyProviders:
  - name: p
    auth: {type: weird, username: SECRET-user, password: SECRET-pass}
    ipList:
      - "http://u:s3cr3t@10.0.0.1:99999"
      - "http://u:hunter2@10.0.0.1:8080/path"
      - "https://u:hunter2@10.0.0.1"
      - "u:hunter2@10.0.0.1:80"
      - "http://u:pa%40ss@:80"
      - "http://u:pa@ss@bad host:80"
      - "http://u:SECRET x@10.0.0.1"
      - "http://u:SECRET#x@10.0.0.1"
ipPools:
  - {name: q, ipRequests: [{provider: p, count: 0}]}
targets:
  - name: t
    regex: "("
    ipList: ["http://u:s3cr3t@h:1", "http://u:s3cr3t@h:1"]
  - name: t2
    regex: a
    ipList: ["http://SECRET:SECRET@h:0"]
`
	cfg, err := loadString(t, body, nil)
	if err == nil {
		t.Fatal("want a load error")
	}
	check := func(what, s string) {
		for _, sec := range secrets {
			if strings.Contains(s, sec) {
				t.Errorf("%s shows %q:\n%s", what, sec, s)
			}
		}
	}
	check("Load error", err.Error())

	t.Setenv("PROXY_HOPPER_AUTH_JWT_EXPIRY_MINUTES", "")
	cfg, err = loadString(t, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Resolve()
	if err == nil {
		t.Fatal("want problems")
	}
	if n := len(problemsOf(t, err)); n < 12 {
		t.Errorf("only %d problems:\n%v", n, err)
	}
	check("Resolve error", err.Error())

	cfg, ts := mustResolve(t, `
proxyProviders:
  - {name: p, auth: {username: SECRET-user, password: SECRET-pass}, ipList: ["http://u:s3cr3t@10.0.0.1"]}
ipPools:
  - {name: q, ipRequests: [{provider: p, count: 1}]}
targets:
  - {name: t, regex: a, ipPool: q}
`)
	check("Summary", cfg.Summary(ts))
}

func TestSummary(t *testing.T) {
	clearEnv(t)
	t.Setenv("PROXY_HOPPER_PORT", "9000")
	cfg, ts := mustResolve(t, `
ipPools:
  - {name: inline, ipList: [a, b]}
targets:
  - {name: "it's", regex: 'a\.b', ipPool: inline}
  - {name: plain, regex: '.*', ipList: [c]}
`)
	want := `Pools: 1 defined.
  'inline': 0 request(s), providers=[], 2 inline IP(s)
Config OK — 2 target(s) defined.
  "it's": 2 IP(s), pool='inline', regex='a\\.b'
  'plain': 1 IP(s), regex='.*'
Server defaults: host=0.0.0.0, port=9000, backend=memory
`
	if got := cfg.Summary(ts); got != want {
		t.Errorf("Summary:\n%s\nwant:\n%s", got, want)
	}
}

func TestPyRepr(t *testing.T) {
	for in, want := range map[string]string{
		`.*\.googleapis\.com.*`: `'.*\\.googleapis\\.com.*'`,
		`it's`:                  `"it's"`,
		`'"`:                    `'\'"'`,
		"tab\there\n":           `'tab\there\n'`,
		"\x00\x7f":              `'\x00\x7f'`,
		"Zürich":                `'Zürich'`,
		"":                      `''`,
	} {
		if got := pyRepr(in); got != want {
			t.Errorf("pyRepr(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestEnvName(t *testing.T) {
	for key, want := range map[string]string{
		"port": "PROXY_HOPPER_PORT", "logLevel": "PROXY_HOPPER_LOG_LEVEL", "redisUrl": "PROXY_HOPPER_REDIS_URL",
		"probeUrls": "PROXY_HOPPER_PROBE_URLS", "proxyReadTimeout": "PROXY_HOPPER_PROXY_READ_TIMEOUT",
		"debugQuarantine": "PROXY_HOPPER_DEBUG_QUARANTINE", "adminHost": "PROXY_HOPPER_ADMIN_HOST",
		"maxBodySize": "PROXY_HOPPER_MAX_BODY_SIZE",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %s, want %s", key, got, want)
		}
	}
}

// FuzzParseUpstream: never panics, accepts only usable addresses, and an
// error never shows what stands before the '@' of an entry (a marker no
// message contains is put there).
func FuzzParseUpstream(f *testing.F) {
	for _, s := range [][3]string{
		{"http://u:", "p", "h:1"}, {"", "x", "10.0.0.1:80"}, {"socks5://", "a:b", "[::1]:80"},
		{"http://:", "p%40", "[::1]"}, {"x", "://y", "z"}, {"http://u", "#", "h"}, {"", "", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	const marker = "«pw»"
	f.Fuzz(func(t *testing.T, prefix, secret, rest string) {
		for _, entry := range []string{prefix + secret + ":" + rest, prefix + marker + secret + "@" + strings.ReplaceAll(rest, "@", "")} {
			u, err := parseUpstream(entry)
			if err == nil {
				if u.host == "" || u.port < 0 || u.port > 65535 || strings.ContainsAny(u.host, "@/ ") {
					t.Fatalf("parseUpstream(%q) = %+v", entry, u)
				}
				continue
			}
			if strings.Contains(entry, marker) && strings.Contains(err.Error(), marker) {
				t.Fatalf("error for %q shows the credentials: %v", entry, err)
			}
		}
	})
}

// FuzzConfig: no YAML document makes loading, resolving or summarizing
// panic.
func FuzzConfig(f *testing.F) {
	files, _ := filepath.Glob("testdata/proxy-hopper/*.yaml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(minimal))
	f.Add([]byte("targets: [{name: 1, regex: [x], ipList: {a: b}, identity: 3}]\nauth: {roles: [1]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc any
		if yaml.Unmarshal(data, &doc) != nil {
			return
		}
		cfg, err := fromDocument(doc, map[string]any{"port": "1"}, envVars{})
		if err != nil {
			return
		}
		for i := range cfg.Targets {
			cfg.Targets[i].CAFile = "" // no reading of arbitrary files
		}
		if ts, err := targetsOf(cfg); err == nil {
			_ = cfg.Summary(ts)
		}
	})
}

// TestDeployExamples: the example configs we ship load and resolve.
func TestDeployExamples(t *testing.T) {
	clearEnv(t)
	files, _ := filepath.Glob("../deploy/*.yaml")
	more, _ := filepath.Glob("../deploy/examples/*.yaml")
	files = append(files, more...)
	if len(files) < 3 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			ts, err := targetsOf(cfg)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if len(ts) == 0 {
				t.Error("no targets")
			}
		})
	}

	// config.example.yaml shows every key the server block has.
	data, err := os.ReadFile("../deploy/config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, fi := range serverKeys() {
		if !strings.Contains(string(data), "  "+fi.key+":") || !strings.Contains(string(data), EnvName(fi.key)) {
			t.Errorf("config.example.yaml does not show server.%s with %s", fi.key, EnvName(fi.key))
		}
	}
	cfg, err := Load("../deploy/config.example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Server, DefaultServerConfig()) {
		t.Errorf("config.example.yaml server block differs from the defaults:\n%+v", cfg.Server)
	}
}
