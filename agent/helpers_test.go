package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// clearEnv hides every PROXY_HOPPER_* variable of the test process (an
// empty value counts as unset).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(strings.ToUpper(k), config.EnvPrefix) {
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

// loadResolved loads and resolves the config at path.
func loadResolved(path string) (*config.Resolved, error) {
	cfg, err := config.Load(path, nil)
	if err != nil {
		return nil, err
	}
	return cfg.Resolve()
}

func mustLoad(t *testing.T, body string, overrides map[string]any) *config.Config {
	t.Helper()
	cfg, err := config.Load(writeConfig(t, body), overrides)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

func mustResolve(t *testing.T, body string) *config.Resolved {
	t.Helper()
	res, err := mustLoad(t, body, nil).Resolve()
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	return res
}

// loadAndResolve returns the problems of Load, or else of Resolve.
func loadAndResolve(t *testing.T, body string) []string {
	t.Helper()
	cfg, err := config.Load(writeConfig(t, body), nil)
	if err == nil {
		_, err = cfg.Resolve()
	}
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %T: %v", err, err)
	}
	return ve.Problems
}

const minimal = `
targets:
  - name: t
    regex: 'example\.com'
    ipList: ["10.0.0.1:3128"]
`
