package config

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func loadResolved(t *testing.T, body string) (*Resolved, error) {
	t.Helper()
	clearEnv(t)
	return LoadResolved(context.Background(), writeConfig(t, body), nil)
}

// A bad duration (a decode problem) does not hide the other problems of
// the file: the decode problems and Resolve's come in one error, each
// naming its target and field, and a field that failed to decode is not
// reported a second time by Resolve.
func TestLoadResolvedReportsEverything(t *testing.T) {
	_, err := loadResolved(t, `
server:
  port: 99999
  probeInterval: soon
targets:
  - name: api
    regex: '(?<=x)y'
    ipList: ["10.0.0.1"]
    minRequestInterval: 5 parsecs
    numRetries: -1
  - name: web
    regex: 7
    ipList: ["10.0.0.2"]
    quarantineTime: -3s
  - name: api
    regex: 'b'
    ipList: "10.0.0.3"
`)
	got := problemsOf(t, err)
	want := []string{
		`server: probeInterval: invalid duration "soon" (want e.g. 500ms, 30s, 5m, 2h, or a number of seconds)`,
		`targets[0] (api): minRequestInterval: invalid duration "5 parsecs" (want e.g. 500ms, 30s, 5m, 2h, or a number of seconds)`,
		`targets[1] (web): regex: want a string, got a number (quote it)`,
		`targets[1] (web): quarantineTime: duration -3s must not be negative`,
		`targets[2] (api): ipList: want a list, got a string`,
		`server: port must be a port from 1 to 65535, got 99999`,
		`targets[0] (api): regex "(?<=x)y" is not valid RE2 syntax`,
		`targets[0] (api): numRetries must be 0 or more, got -1`,
		`targets[2] (api): name "api" is already used by targets[0]`,
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("missing %q", w)
		}
	}
	for _, g := range got {
		// Said once, by the decode problem: not "regex is required" for
		// web, not "needs ipPool or ipList" for the third target.
		if strings.Contains(g, "regex is required") || strings.Contains(g, "needs ipPool or ipList") {
			t.Errorf("repeated problem about a field that did not decode: %q", g)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}

	// Inside a section's list: the API key's wrong type is said once.
	_, err = loadResolved(t, "auth:\n  apiKeys: [{name: ci, key: 5}]\ntargets:\n  - {name: t, regex: a, ipList: [a]}\n")
	if got := problemsOf(t, err); len(got) != 1 || !strings.HasPrefix(got[0], "auth: apiKeys[0].key: want a string") {
		t.Errorf("problems %q", got)
	}
}

// An error lists at most MaxProblemsShown problems and counts the rest.
func TestValidationErrorIsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("targets:\n")
	for i := range 130 {
		fmt.Fprintf(&b, "  - {name: t%d, regex: a, ipList: [a], numRetries: -1}\n", i)
	}
	_, err := loadResolved(t, b.String())
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 130 {
		t.Fatalf("err = %v", err)
	}
	msg := err.Error()
	if n := strings.Count(msg, "\n"); n != MaxProblemsShown {
		t.Errorf("%d lines, want %d", n+1, MaxProblemsShown+1)
	}
	if !strings.HasSuffix(msg, "\n… and 80 more problems") || !strings.Contains(msg, "targets[49] (t49)") || strings.Contains(msg, "targets[50] (t50)") {
		t.Errorf("message ends %q", msg[len(msg)-200:])
	}
}

// An empty file (nothing, or only comments) is refused; a file with other
// content and no targets is valid (targets may come at run time, as in
// proxy-hopper) with a warning that it serves nothing yet.
func TestNoTargets(t *testing.T) {
	for _, body := range []string{"", "# only a comment\n\n  # more\n"} {
		_, err := loadResolved(t, body)
		got := problemsOf(t, err)
		if len(got) != 1 || !strings.HasPrefix(got[0], "config: the file is empty") {
			t.Errorf("%q: problems %q, want the empty-file error", body, got)
		}
	}
	for _, body := range []string{"targets: []\n", "targets:\n", "server:\n  port: 8080\n"} {
		got := warningsOf(t, body)
		if len(got) != 1 || !strings.HasPrefix(got[0], "no targets: every request is refused") {
			t.Errorf("%q: warnings %q, want the no-targets warning", body, got)
		}
	}
	// A read problem is not a ValidationError and comes as it is.
	if _, err := LoadResolved(context.Background(), t.TempDir()+"/missing.yaml", nil); err == nil || errors.As(err, new(*ValidationError)) {
		t.Errorf("missing file: %v", err)
	}
}

func warningsOf(t *testing.T, body string) []string {
	t.Helper()
	res, err := loadResolved(t, body)
	if err != nil {
		t.Fatalf("LoadResolved: %v", err)
	}
	var out []string
	for _, w := range res.Warnings() {
		if !strings.Contains(w, "is not anchored with ^") {
			out = append(out, w)
		}
	}
	return out
}

func TestShadowedTargets(t *testing.T) {
	got := warningsOf(t, `
targets:
  - {name: one, regex: '^api\.example\.com', ipList: [a]}
  - {name: two, regex: '^api\.example\.com', ipList: [b]}
  - {name: all, regex: '.*', ipList: [c]}
  - {name: web, regex: '^web\.example\.com', ipList: [d]}
  - {name: alsoall, regex: '^', ipList: [e]}
`)
	want := []string{
		`target 'two' is never selected: target 'one', earlier in the list, has the same regex and targets are matched top to bottom; move 'two' above it or remove it`,
		`target 'web' is never selected: target 'all', earlier in the list, has the catch-all regex '.*', which matches every URL and targets are matched top to bottom; move 'web' above it or remove it`,
		`target 'alsoall' is never selected: target 'all', earlier in the list, has the catch-all regex '.*', which matches every URL and targets are matched top to bottom; move 'alsoall' above it or remove it`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A catch-all last, and regexes that only look alike, warn nothing.
	if got := warningsOf(t, `
targets:
  - {name: a, regex: '^a\.example\.com', ipList: [a]}
  - {name: b, regex: '^b\.example\.com', ipList: [b]}
  - {name: host, regex: '^(https?://)?[^/]*', ipList: [c]}
  - {name: rest, regex: '.*', ipList: [d]}
`); len(got) != 1 || !strings.HasPrefix(got[0], "target 'rest' is never selected: target 'host'") {
		// '^(https?://)?[^/]*' matches the empty string at the start of
		// every URL, so it is a catch-all too and hides 'rest'.
		t.Errorf("warnings: %q", got)
	}
	for _, re := range []string{`^$`, `example`, `^https://`, `:443$`, `.+\.example\.com`} {
		if matchesEverything(mustCompile(t, re)) {
			t.Errorf("%s counted as a catch-all", re)
		}
	}
	for _, re := range []string{`.*`, `^`, `$`, `(.*)`, `^.*$`, `.?`, `(?i).*`, ``} {
		if !matchesEverything(mustCompile(t, re)) {
			t.Errorf("%s not counted as a catch-all", re)
		}
	}
}

func TestAdminListenerWarning(t *testing.T) {
	const target = "targets:\n  - {name: t, regex: '^a', ipList: [a]}\n"
	const tok = "  adminToken: 0123456789abcdef0123\n"
	got := warningsOf(t, "server:\n  admin: true\n"+tok+target)
	if len(got) != 1 || !strings.HasPrefix(got[0], "server.admin: the admin API listens on 0.0.0.0:8081 over plain HTTP") {
		t.Errorf("default adminHost: %q", got)
	}
	got = warningsOf(t, "server:\n  admin: true\n  adminHost: '::'\n  adminPort: 9000\n"+tok+target)
	if len(got) != 1 || !strings.Contains(got[0], "listens on [::]:9000") {
		t.Errorf("adminHost '::': %q", got)
	}
	for _, quiet := range []string{"  adminHost: 127.0.0.1\n", "  adminHost: localhost\n", "  adminHost: '::1'\n", "  adminSecureCookie: true\n"} {
		if got := warningsOf(t, "server:\n  admin: true\n"+quiet+tok+target); len(got) != 0 {
			t.Errorf("%q: %q", quiet, got)
		}
	}
}

func TestSwitchedOffKeys(t *testing.T) {
	got := warningsOf(t, `
server:
  adminPort: 9000
  metrics: false
  metricsToken: 0123456789abcdef0123
  probe: false
  probeInterval: 5s
  probeUrls: [http://10.0.0.1]
  redisUrl: redis://10.0.0.9:6379/0
auth:
  jwtSecret: s3cret-s3cret-s3cret
  apiKeys: [{name: k, key: abcdefabcdef}]
  roles: {ops: {permissions: [read]}}
targets:
  - name: t
    regex: '^a'
    ipList: [a]
    identity: {cookies: false, rotateAfterRequests: 5}
transparent:
  local: {enabled: false, ports: [80]}
`)
	want := []string{
		"auth.enabled is off: auth.apiKeys, auth.jwtSecret, auth.roles are set and do nothing; turn auth.enabled on or remove them",
		"targets[0] (t): identity.enabled is off: identity.cookies, identity.rotateAfterRequests are set and do nothing; turn identity.enabled on or remove them",
		"transparent.local.enabled is off: transparent.local.ports is set and does nothing; turn transparent.local.enabled on or remove it",
		"server.admin is off: server.adminPort is set and does nothing; turn server.admin on or remove it",
		"server.metrics is off: server.metricsToken is set and does nothing; turn server.metrics on or remove it",
		"server.probe is off: server.probeInterval, server.probeUrls are set and do nothing; turn server.probe on or remove them",
		"server.backend: redis is off: server.redisUrl is set and does nothing; turn server.backend: redis on or remove it",
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The same keys with their switches on warn nothing; nor do
	// switches set off alone.
	if got := warningsOf(t, `
server: {metrics: true, probe: false, admin: false}
auth: {enabled: false}
targets:
  - {name: t, regex: '^a', ipList: [a], identity: {enabled: false}}
transparent: {local: {enabled: false}}
`); len(got) != 0 {
		t.Errorf("switches alone: %q", got)
	}
	// Keys set to their defaults change nothing and are not named:
	// deploy/config.example.yaml lists every key so, and warns only about
	// its example values under switches that are off.
	clearEnv(t)
	res, err := LoadResolved(context.Background(), "../deploy/config.example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	var example []string
	for _, w := range res.Warnings() {
		if !strings.Contains(w, "is not anchored with ^") {
			example = append(example, w)
		}
	}
	if want := []string{
		"auth.enabled is off: auth.apiKeys, auth.roles are set and do nothing; turn auth.enabled on or remove them",
		"transparent.local.enabled is off: transparent.local.cgroups, transparent.local.excludeCidrs, transparent.local.ports are set and do nothing; turn transparent.local.enabled on or remove them",
		"transparent.gateway.enabled is off: transparent.gateway.excludeCidrs, transparent.gateway.interfaces, transparent.gateway.ports, transparent.gateway.uplinks are set and do nothing; turn transparent.gateway.enabled on or remove them",
	}; !slices.Equal(example, want) {
		t.Errorf("config.example.yaml warnings:\n%s", strings.Join(example, "\n"))
	}
	// Auth set from the environment counts as set.
	clearEnv(t)
	t.Setenv("PROXY_HOPPER_AUTH_JWT_SECRET", "from-the-environment")
	res, err = LoadResolved(context.Background(), writeConfig(t, "targets:\n  - {name: t, regex: '^a', ipList: [a]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := res.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], "auth.enabled is off: auth.jwtSecret is set") {
		t.Errorf("auth from the environment: %q", w)
	}
}

func TestUnreadKeys(t *testing.T) {
	got := warningsOf(t, `
server: {debugQuarantine: true, debugBackend: true}
proxyProviders:
  - {name: p, ipList: [a], mutable: false}
ipPools:
  - {name: q, ipRequests: [{provider: p, count: 1}], static: false}
targets:
  - {name: t, regex: '^a', ipPool: q, mutable: false, static: false}
  - {name: u, regex: '^b', ipList: [b], mutable: true, static: true}
`)
	want := []string{
		"server.debugQuarantine is set but not read by this version",
		"server.debugBackend is set but not read by this version",
	} // mutable and static rule the runtime configuration: read, no warning
	if len(got) != len(want) {
		t.Fatalf("warnings:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("warning %d = %q, want it to start %q", i, got[i], want[i])
		}
	}
}

func mustCompile(t *testing.T, re string) *regexp.Regexp {
	t.Helper()
	r, err := regexp.Compile(re)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestProxyHopperExampleWarnings: proxy-hopper's own examples load with
// no warning but the anchoring advice, except the admin API on every
// interface in plain HTTP where they turn it on.
func TestProxyHopperExampleWarnings(t *testing.T) {
	clearEnv(t)
	files, err := filepath.Glob("testdata/proxy-hopper/*.yaml")
	if err != nil || len(files) < 10 {
		t.Fatalf("examples: %v %v", files, err)
	}
	admin := map[string]bool{"compose-auth-api-keys.yaml": true, "compose-auth-oidc.yaml": true}
	for _, f := range files {
		cfg, err := Load(f, nil)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		giveAdminToken(cfg)
		res, err := cfg.Resolve()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var got []string
		for _, w := range res.Warnings() {
			if !strings.Contains(w, "is not anchored with ^") {
				got = append(got, w)
			}
		}
		name := filepath.Base(f)
		switch {
		case admin[name]:
			if len(got) != 1 || !strings.HasPrefix(got[0], "server.admin: the admin API listens on 0.0.0.0:8081 over plain HTTP") {
				t.Errorf("%s: warnings %q", name, got)
			}
		case len(got) != 0:
			t.Errorf("%s: warnings %q", name, got)
		}
	}
}

// Warnings are bounded like errors; shadowing is found in linear time.
func TestWarningsAreBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("targets:\n  - {name: all, regex: '.*', ipList: [a]}\n")
	for i := range 5000 {
		fmt.Fprintf(&b, "  - {name: t%d, regex: '^t%d', ipList: [a]}\n", i, i)
	}
	res, err := loadResolved(t, b.String())
	if err != nil {
		t.Fatal(err)
	}
	w := res.Warnings()
	if len(w) != MaxProblemsShown+1 || w[MaxProblemsShown] != "… and 4950 more warnings" {
		t.Errorf("%d warnings, last %q", len(w), w[len(w)-1])
	}
	if n := len(ShadowedTargets(res.Targets)); n != 5000 {
		t.Errorf("%d shadowed, want 5000", n)
	}
}
