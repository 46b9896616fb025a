package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/mitm"
)

// caRun runs the binary with args; it returns stdout, stderr and the exit code.
func caRun(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr strings.Builder
	c := exec.Command(bin, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	return stdout.String(), stderr.String(), exitCode(err)
}

// TestCAInit: the real binary writes a key 0600 (even under umask 0) and
// a certificate 0644 that LoadCA accepts and a leaf minted with it
// verifies against; it prints the fingerprint and how to trust the CA,
// never the key. Existing files are refused (nothing written) unless
// --force, which replaces both with a new CA, the key still 0600.
func TestCAInit(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	out, errOut, code := caRun(t, "/bin/sh", "-c", `umask 0 && exec "$0" ca init --cert "$1" --key "$2" --days 30`, bin, cert, key)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	checkModes(t, cert, key)
	ca, err := mitm.LoadCA(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(ca.Cert.NotAfter); d < 29*24*time.Hour || d > 30*24*time.Hour {
		t.Errorf("CA valid for %v more, want 30 days", d)
	}
	for _, want := range []string{"SHA-256 fingerprint  " + ca.Fingerprint(), "update-ca-certificates", "curl --cacert " + cert} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	keyPEM, _ := os.ReadFile(key)
	for _, l := range strings.Split(string(keyPEM), "\n") {
		if len(l) > 8 && !strings.HasPrefix(l, "-----") && strings.Contains(out+errOut, l) {
			t.Fatal("the output quotes the key")
		}
	}
	m, err := mitm.NewMinter(ca, mitm.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := m.Certificate(&tls.ClientHelloInfo{ServerName: "cli.example"})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	parsed, err := x509.ParseCertificate(leaf.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parsed.Verify(x509.VerifyOptions{DNSName: "cli.example", Roots: pool}); err != nil {
		t.Fatal(err)
	}

	// Existing files: refused, untouched; a lone existing cert leaves no key behind.
	certBefore, _ := os.ReadFile(cert)
	if _, errOut, code := caRun(t, bin, "ca", "init", "--cert", cert, "--key", key); code != 1 || !strings.Contains(errOut, "--force") {
		t.Errorf("over existing files: exit %d, %s", code, errOut)
	}
	if b, _ := os.ReadFile(cert); string(b) != string(certBefore) {
		t.Error("the certificate was replaced without --force")
	}
	lone := filepath.Join(t.TempDir(), "k")
	if _, _, code := caRun(t, bin, "ca", "init", "--cert", cert, "--key", lone); code != 1 {
		t.Errorf("existing cert: exit %d", code)
	}
	if _, err := os.Stat(lone); !os.IsNotExist(err) {
		t.Errorf("a key was left behind: %v", err)
	}

	// --force: a new CA, modes restored even if the old key was widened.
	os.Chmod(key, 0o644)
	if _, errOut, code := caRun(t, bin, "ca", "init", "--cert", cert, "--key", key, "--force"); code != 0 {
		t.Fatalf("--force: exit %d: %s", code, errOut)
	}
	checkModes(t, cert, key)
	ca2, err := mitm.LoadCA(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if ca2.Fingerprint() == ca.Fingerprint() {
		t.Error("--force kept the old CA")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".ca-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// --force whose certificate cannot be written leaves the old pair.
	keyBefore, _ := os.ReadFile(key)
	if _, _, code := caRun(t, bin, "ca", "init", "--cert", filepath.Join(dir, "missing", "ca.crt"), "--key", key, "--force"); code != 1 {
		t.Errorf("--force into a missing directory: exit %d", code)
	}
	if b, _ := os.ReadFile(key); string(b) != string(keyBefore) {
		t.Error("the key was replaced although the certificate could not be written")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".ca-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	for _, args := range [][]string{
		{"ca"}, {"ca", "show"}, {"ca", "init"}, {"ca", "init", "--cert", cert},
		{"ca", "init", "--cert", cert, "--key", cert}, {"ca", "init", "--cert", "a", "--key", "b", "--days", "0"},
		{"ca", "init", "--cert", "a", "--key", "b", "extra"},
	} {
		if _, _, code := caRun(t, bin, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

func checkModes(t *testing.T, cert, key string) {
	t.Helper()
	for f, want := range map[string]os.FileMode{cert: 0o644, key: 0o600} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", f, st.Mode().Perm(), want)
		}
	}
}
