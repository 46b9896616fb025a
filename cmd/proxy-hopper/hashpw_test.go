package main

import (
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// checkHash: out is one line, a cost-12 bcrypt hash of pw that auth
// accepts as auth.admin.passwordHash (auth.CheckPasswordHash).
func checkHash(t *testing.T, out, pw string) {
	t.Helper()
	h := strings.TrimSuffix(out, "\n")
	if strings.Contains(h, "\n") || auth.CheckPasswordHash(h) != nil {
		t.Fatalf("output %q is not one bcrypt hash", out)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte(pw)) != nil {
		t.Errorf("hash %q does not match %q", h, pw)
	}
	if c, _ := bcrypt.Cost([]byte(h)); c != auth.HashCost {
		t.Errorf("cost %d, want %d", c, auth.HashCost)
	}
}

// TestHashPassword: the password as the argument (proxy-hopper's form)
// or as stdin's first line; the hash on stdout, nothing else there.
func TestHashPassword(t *testing.T) {
	bin := buildBinary(t)
	var stdout, stderr strings.Builder
	c := exec.Command(bin, "hash-password", "s3cret pass")
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	checkHash(t, stdout.String(), "s3cret pass")

	stdout.Reset()
	c = exec.Command(bin, "hash-password")
	c.Stdin = strings.NewReader("from stdin\r\nsecond line\n")
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	checkHash(t, stdout.String(), "from stdin")

	for _, bad := range []struct {
		args  []string
		stdin string
		code  int
	}{
		{[]string{"hash-password"}, "", 1},
		{[]string{"hash-password"}, "\n", 1},
		{[]string{"hash-password"}, strings.Repeat("x", 5000) + "\n", 1},
		{[]string{"hash-password", ""}, "", 1},
		{[]string{"hash-password", strings.Repeat("x", 73)}, "", 1},
		{[]string{"hash-password", "a", "b"}, "", 2},
	} {
		stdout.Reset()
		c := exec.Command(bin, bad.args...)
		c.Stdin = strings.NewReader(bad.stdin)
		c.Stdout = &stdout
		if err := c.Run(); exitCode(err) != bad.code || stdout.Len() != 0 {
			t.Errorf("%q with stdin %.10q: exit %d, stdout %q; want exit %d and nothing", bad.args, bad.stdin, exitCode(err), stdout.String(), bad.code)
		}
	}
}
