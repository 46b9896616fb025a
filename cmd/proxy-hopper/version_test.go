package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolveVersion(t *testing.T) {
	mod := func(v string) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Path: "github.com/proxy-hopper/proxy-hopper", Version: v}}
	}
	for _, tc := range []struct {
		name   string
		linked string
		bi     *debug.BuildInfo
		ok     bool
		want   string
	}{
		{"ldflags win", "v1.4.0-3-gabc", mod("v1.2.3"), true, "v1.4.0-3-gabc"},
		{"go install @tag", "", mod("v1.2.3"), true, "v1.2.3"},
		{"pseudo-version from vcs", "", mod("v0.0.0-20261205114818-614bdba1a2b3+dirty"), true, "v0.0.0-20261205114818-614bdba1a2b3+dirty"},
		{"devel", "", mod("(devel)"), true, "dev"},
		{"no module version", "", mod(""), true, "dev"},
		{"no build info", "", nil, false, "dev"},
	} {
		if got := resolveVersion(tc.linked, tc.bi, tc.ok); got != tc.want {
			t.Errorf("%s: resolveVersion = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestVersionLinkTime builds the binary as make build does and checks
// that `version` prints the -X value, and without it a non-empty version.
func TestVersionLinkTime(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ph")
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7-test", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build: %v", err)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "proxy-hopper v9.8.7-test" {
		t.Fatalf("version = %q (%v), want proxy-hopper v9.8.7-test", out, err)
	}
}
