package check

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// root is the repository root.
func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// need returns the environment variable scripts/deploy-check.sh sets.
func need(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run scripts/deploy-check.sh (make deploy-check)", name)
	}
	return v
}

// validate runs `proxy-hopper validate` on a config with env added.
func validate(t *testing.T, config string, env []string) error {
	t.Helper()
	cmd := exec.Command(need(t, "PH_BIN"), "validate", "--config", config)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return &cmdError{err: err, out: out.String()}
	}
	if !strings.Contains(out.String(), "Config OK") {
		return &cmdError{out: out.String()}
	}
	return nil
}

type cmdError struct {
	err error
	out string
}

func (e *cmdError) Error() string {
	if e.err == nil {
		return "validate: no Config OK:\n" + e.out
	}
	return "validate: " + e.err.Error() + ":\n" + e.out
}
