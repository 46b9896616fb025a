package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// buildBinary compiles the CLI once per test binary.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "proxy-hopper")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build: %v", err)
	}
	return bin
}

// writeConfig writes a test config (no prober unless it names its URLs).
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	return testenv.WriteAgentConfig(t, body)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestValidate(t *testing.T) {
	bin := buildBinary(t)
	good := writeConfig(t, `
targets:
  - name: api
    regex: 'api\.example\.com'
    ipList: ["127.0.0.2:3128", "127.0.0.3:3128"]
  - name: rest
    regex: '.*'
    ipList: ["127.0.0.4"]
`)
	out, err := exec.Command(bin, "validate", "--config", good).CombinedOutput()
	if err != nil {
		t.Fatalf("validate good config: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Config OK — 2 target(s) defined.") {
		t.Errorf("validate output:\n%s", out)
	}
	for _, want := range []string{"'api': 2 IP(s)", "'rest': 1 IP(s)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
	// The unanchored regex is open to other hosts containing the name: a
	// warning (on stderr), not an error; the catch-all gets none.
	var stdout, stderr strings.Builder
	c := exec.Command(bin, "validate", "--config", good)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("validate good config: %v", err)
	}
	if w := stderr.String(); !strings.Contains(w, "warning: target 'api': regex 'api\\\\.example\\\\.com' is not anchored") ||
		strings.Contains(w, "'rest'") || strings.Count(w, "warning:") != 1 {
		t.Errorf("validate warnings:\n%s", w)
	}
	if strings.Contains(stdout.String(), "warning") {
		t.Errorf("warnings on stdout:\n%s", stdout.String())
	}

	bad := writeConfig(t, `
targets:
  - name: api
    regex: '(?<=x)y'
    ipList: ["127.0.0.2:3128"]
    numRetries: -1
`)
	out, err = exec.Command(bin, "validate", "--config", bad).CombinedOutput()
	if code := exitCode(err); code != 1 {
		t.Fatalf("bad config: exit %d, want 1 (as proxy-hopper)\n%s", code, out)
	}
	for _, want := range []string{"api", "regex", "numRetries"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, out)
		}
	}

	out, err = exec.Command(bin, "validate").CombinedOutput()
	if code := exitCode(err); code != 2 {
		t.Fatalf("no config: exit %d, want 2\n%s", code, out)
	}
	out, err = exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "proxy-hopper ") {
		t.Fatalf("version: %v %s", err, out)
	}
}

// TestRunServesAndStopsOnSIGTERM runs the real binary against a tinyproxy
// upstream, sends a request in header mode, then stops it with SIGTERM
// while a slow request is in flight: the request completes and the exit
// code is 0.
func TestRunServesAndStopsOnSIGTERM(t *testing.T) {
	bin := buildBinary(t)
	var probes, slowArrived atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowArrived.Add(1)
			time.Sleep(700 * time.Millisecond)
		}
		if r.URL.Path == "/probe" {
			probes.Add(1)
		}
		fmt.Fprint(w, "hello from origin")
	}))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	port := testenv.FreePort(t, "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
server:
  host: 127.0.0.1
  logFormat: json
  probeUrls: ["%s/probe"]
  probeInterval: 1s
targets:
  - name: local
    regex: '127\.0\.0\.1'
    ipList: ["%s"]
    minRequestInterval: 0
`, origin.URL, tp.Addr))
	var logs bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfg, "--port", fmt.Sprint(port), "--log-level", "DEBUG")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testenv.WaitListening(t, addr, 10*time.Second)

	get := func(path string) (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		req.Header.Set("X-Proxy-Hopper-Target", origin.URL)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := get("/hi"); err != nil || code != 200 || body != "hello from origin" {
		t.Fatalf("request: %d %q %v\nlogs:\n%s", code, body, err, logs.String())
	}
	// The prober probes the IP while no request uses it (rounds every 1s,
	// each probe within 100ms of the round's start: jitter is a tenth of
	// the interval).
	testenv.Eventually(t, 5*time.Second, func() error {
		if probes.Load() == 0 {
			return errors.New("the origin saw no probe") // logs are written by the agent process: read them only once it exited
		}
		return nil
	})
	type result struct {
		code int
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		code, _, err := get("/slow")
		slow <- result{code, err}
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		if slowArrived.Load() == 0 {
			return errors.New("the slow request is not at the origin")
		}
		return nil
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-slow
	if r.err != nil || r.code != 200 {
		t.Errorf("in-flight request during shutdown: %d %v", r.code, r.err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\nlogs:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("agent did not exit after SIGTERM\nlogs:\n%s", logs.String())
	}
	// The prober ran and stopped with the agent.
	if probes.Load() == 0 {
		t.Errorf("the origin saw no probe\nlogs:\n%s", logs.String())
	}
	for _, msg := range []string{`"message":"prober started"`, `"message":"prober stopped"`} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("logs lack %s\nlogs:\n%s", msg, logs.String())
		}
	}
	if strings.Contains(logs.String(), "secret") {
		t.Errorf("logs leak credentials")
	}
	// The start-up line: memory, auth off, the proxy listener and the prober.
	var started map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if msg, _ := m["message"].(string); strings.HasPrefix(msg, "Proxy Hopper running on ") {
			started = m
		}
	}
	want := fmt.Sprintf("Proxy Hopper running on 127.0.0.1:%d (backend=memory, auth=disabled)", port)
	if started == nil || started["message"] != want || started["backend"] != "memory" || started["auth"] != "off" ||
		fmt.Sprint(started["modes"]) != "[explicit/header prober]" || started["version"] == "" || started["redis"] != nil {
		t.Errorf("start-up line %v, want %q with backend memory, auth off, modes [explicit/header prober], a version", started, want)
	}
}

// TestValidateSaysDefaultRole: with auth on, validate tells on stderr what
// a JWT without a role claim reaches; stdout stays proxy-hopper's summary.
func TestValidateSaysDefaultRole(t *testing.T) {
	cfg := writeConfig(t, `
auth:
  enabled: true
  jwtSecret: a-long-random-secret
  defaultRole: none
targets:
  - name: api
    regex: 'api\.example\.com'
    ipList: ["127.0.0.2:3128"]
`)
	var stdout, stderr bytes.Buffer
	if err := validate([]string{"--config", cfg}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "note: a JWT without a role claim gets role 'none' (auth.defaultRole): no target") ||
		strings.Contains(stdout.String(), "note:") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
}
