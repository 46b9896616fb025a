package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Chromium returns the path of headless-capable Chromium. When it is
// missing the test skips only if it could not have been installed (not
// root) and PH_REQUIRE_BPF is not 1 (CI); otherwise it fails with the
// install hint, so the browser test never passes by skipping in CI.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("PH_REQUIRE_BPF") == "1" || os.Geteuid() == 0 {
		t.Fatal("chromium not found: run scripts/deps.sh (or apt-get install chromium)")
	}
	t.Skip("chromium not found and not root: run scripts/deps.sh as root to install it")
	return ""
}

// chromiumArgs are headless Chromium's arguments with a fresh profile and
// no background traffic (updates, sync), then more.
func chromiumArgs(t testing.TB, more ...string) []string {
	return append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(),
	}, more...)
}

// DumpDOM loads url in headless Chromium and returns the DOM after the
// page's scripts have had budget of virtual time (timers run, fetches
// complete). The whole run is bounded by 30s of real time.
func DumpDOM(t testing.TB, url string, budget time.Duration) string {
	t.Helper()
	bin := Chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, chromiumArgs(t,
		fmt.Sprintf("--virtual-time-budget=%d", budget.Milliseconds()), "--dump-dom", url)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, stderr.String())
	}
	return string(out)
}

// limitedBuffer keeps the first 16KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 16<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
