package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/mitm"
)

// writeInterceptCA writes a fresh interception CA next to a config file and
// returns the directory.
func writeInterceptCA(t *testing.T, keyMode os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM, err := mitm.GenerateCA(mitm.CAOptions{Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), keyPEM, keyMode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "ca.key"), keyMode); err != nil {
		t.Fatal(err)
	}
	return dir
}

func loadIn(t *testing.T, dir, body string) (*Config, error) {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(path, nil)
}

const interceptTargets = `
targets:
  - {name: shop, regex: '^https://shop\.example\.com(:443)?/', ipList: ["10.0.0.1:3128"], tlsIntercept: true}
  - {name: other, regex: 'other', ipList: ["10.0.0.1:3128"]}
`

// The CA is loaded at validation with a relative path read next to the
// config; targets carry tlsIntercept; the bypass list matches domains
// with their subdomains, IPs and whole-host regexes.
func TestInterceptionResolved(t *testing.T) {
	clearEnv(t)
	dir := writeInterceptCA(t, 0o600)
	cfg, err := loadIn(t, dir, `
interception:
  caCert: ca.crt
  caKey: ca.key
  bypassDomains: [bank.example, "*.pinned.example", 192.0.2.7, "[2001:db8::1]"]
  bypassRegex: ['api[0-9]+\.example\.org']
`+interceptTargets)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.Interception.CA == nil {
		t.Fatal("CA not loaded")
	}
	if !r.Targets[0].Intercept || r.Targets[1].Intercept {
		t.Fatalf("Intercept = %v, %v", r.Targets[0].Intercept, r.Targets[1].Intercept)
	}
	for host, want := range map[string]bool{
		"bank.example": true, "BANK.example.": true, "www.bank.example": true, "notbank.example": false,
		"x.pinned.example": true, "pinned.example": true, "192.0.2.7": true, "192.0.2.8": false,
		"[2001:db8::1]": true, "2001:db8::1": true, "api7.example.org": true, "xapi7.example.org": false,
		"api7.example.org.evil": false, "shop.example.com": false,
	} {
		if got := r.Interception.Bypass.Has(host); got != want {
			t.Errorf("Bypass.Has(%q) = %v, want %v", host, got, want)
		}
	}
	if w := strings.Join(r.Warnings(), "\n"); strings.Contains(w, "interception") {
		t.Errorf("warnings: %s", w)
	}
	sum := cfg.Summary(r.Targets)
	for _, want := range []string{"regex='^https://shop\\\\.example\\\\.com(:443)?/', tlsIntercept\n", "TLS interception: CA ca.crt (key ca.key), bypass: 4 domain(s), 1 regex(es)\n"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q:\n%s", want, sum)
		}
	}
}

// Every interception mistake is a validation error naming the key; a CA
// that intercepts nothing, or a bypass list without a CA, is a warning.
func TestInterceptionProblems(t *testing.T) {
	clearEnv(t)
	loose := writeInterceptCA(t, 0o644)
	cases := []struct {
		name, dir, body string
		want            []string
	}{
		{"no CA", t.TempDir(), interceptTargets,
			[]string{"targets[0] (shop): tlsIntercept needs interception.caCert and interception.caKey"}},
		{"half a CA", t.TempDir(), "interception: {caCert: ca.crt}\n" + interceptTargets,
			[]string{"interception: caCert and caKey go together"}},
		{"missing files", t.TempDir(), "interception: {caCert: ca.crt, caKey: ca.key}\n" + interceptTargets,
			[]string{"interception: open CA key: open "}},
		{"key readable by others", loose, "interception: {caCert: ca.crt, caKey: ca.key}\n" + interceptTargets,
			[]string{"interception: load CA key ", "mode 0644", "chmod 600"}},
		{"bypass list too long", t.TempDir(), "interception: {bypassDomains: [" + strings.Repeat("a.example, ", MaxBypassEntries) + "b.example]}\n" + minimal,
			[]string{"interception: bypassDomains and bypassRegex take at most 10000 entries each"}},
		{"bad bypass", t.TempDir(), "interception: {bypassDomains: ['bad domain', 'a..b'], bypassRegex: ['(']}\n" + minimal,
			[]string{`bypassDomains[0]: "bad domain" is not a domain name`, `bypassDomains[1]: "a..b"`, `bypassRegex[0]: "(" is not valid RE2`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := loadIn(t, c.dir, c.body)
			if err == nil {
				_, err = cfg.Resolve()
			}
			if err == nil {
				t.Fatal("resolved; want problems")
			}
			got := strings.Join(problemsOf(t, err), "\n")
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("problems lack %q:\n%s", w, got)
				}
			}
			if strings.Contains(got, "PRIVATE KEY") {
				t.Errorf("problems quote the key:\n%s", got)
			}
		})
	}

	t.Run("warnings", func(t *testing.T) {
		dir := writeInterceptCA(t, 0o600)
		cfg, err := loadIn(t, dir, "interception: {caCert: ca.crt, caKey: ca.key}\n"+minimal)
		if err != nil {
			t.Fatal(err)
		}
		r, err := cfg.Resolve()
		if err != nil {
			t.Fatal(err)
		}
		if w := strings.Join(r.Warnings(), "\n"); !strings.Contains(w, "no target sets tlsIntercept") {
			t.Errorf("warnings: %s", w)
		}
		cfg, err = loadIn(t, dir, "interception: {bypassDomains: [a.example]}\n"+minimal)
		if err != nil {
			t.Fatal(err)
		}
		if r, err = cfg.Resolve(); err != nil {
			t.Fatal(err)
		}
		if w := strings.Join(r.Warnings(), "\n"); !strings.Contains(w, "interception has no CA") {
			t.Errorf("warnings: %s", w)
		}
	})
}
