package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// jsonHead is proxy-hopper's JSON line: its four fields first, in its
// order, its timestamp format and level names, a logger of its modules.
var jsonHead = regexp.MustCompile(`^\{"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d","level":"(TRACE|DEBUG|INFO|WARNING|ERROR)","logger":"proxy_hopper(_redis)?\.[a-z_.]+","message":"`)

// TestJSONLogsOfARunningAgent runs the built binary with logFormat json on
// a password-protected redis-server, auth with API keys and JWTs, metrics,
// admin and the prober, sends a request that succeeds and one refused,
// stops it, and reads every line it wrote: proxy-hopper's field names and
// formats, logger names, durations in seconds, and a start-up line that
// says what runs without the Redis password.
func TestJSONLogsOfARunningAgent(t *testing.T) {
	const version = "v9.9.9-logtest"
	bin := filepath.Join(t.TempDir(), "proxy-hopper")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build: %v", err)
	}
	const redisPassword = "redis-pw-never-logged"
	rd := testenv.StartRedis(t, testenv.RedisOptions{Password: redisPassword})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	port := testenv.FreePort(t, "127.0.0.1")
	metricsPort := testenv.FreePort(t, "127.0.0.1")
	adminPort := testenv.FreePort(t, "127.0.0.1")
	redisURL := fmt.Sprintf("redis://:%s@%s/0", redisPassword, rd.Addr)
	cfg := writeConfig(t, fmt.Sprintf(`
server:
  host: 127.0.0.1
  port: %d
  logFormat: json
  logLevel: DEBUG
  backend: redis
  redisUrl: %s
  shutdownTimeout: 2s
  metrics: true
  metricsHost: 127.0.0.1
  metricsPort: %d
  metricsToken: metrics-token-0123456789
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
  adminToken: admin-token-0123456789abcdef
  probeUrls: ["%s/probe"]
  probeInterval: 1500ms
  probeTimeout: 250ms
auth:
  enabled: true
  jwtSecret: jwt-secret-0123456789abcdef0123456789
  apiKeys:
    - {name: one, key: key-one-0123456789abcdef}
    - {name: two, key: key-two-0123456789abcdef}
targets:
  - name: local
    regex: '^http://127\.0\.0\.1'
    ipList: ["%s"]
    minRequestInterval: 0
`, port, redisURL, metricsPort, adminPort, origin.URL, tp.Addr))
	var logs bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	cmd.Stderr = &logs
	started := time.Now().UTC().Truncate(time.Second)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testenv.WaitListening(t, addr, 10*time.Second)

	get := func(key string) int {
		req, _ := http.NewRequest("GET", "http://"+addr+"/hi", nil)
		req.Header.Set("X-Proxy-Hopper-Target", origin.URL)
		if key != "" {
			req.Header.Set("X-Proxy-Hopper-Auth", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("request: %v\nlogs:\n%s", err, logs.String())
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("key-one-0123456789abcdef"); code != 200 {
		t.Fatalf("request with a key: %d\nlogs:\n%s", code, logs.String())
	}
	if code := get(""); code != 401 {
		t.Fatalf("request without a key: %d\nlogs:\n%s", code, logs.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\nlogs:\n%s", err, logs.String())
	}
	stopped := time.Now().UTC()

	out := logs.String()
	if strings.Contains(out, redisPassword) {
		t.Errorf("logs leak the Redis password:\n%s", out)
	}
	byMsg := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !jsonHead.MatchString(line) {
			t.Errorf("line is not proxy-hopper's JSON: %s", line)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("line %s: %v", line, err)
			continue
		}
		ts, err := time.Parse("2006-01-02T15:04:05", m["timestamp"].(string))
		if err != nil || ts.Before(started) || ts.After(stopped) {
			t.Errorf("timestamp %v not in [%v, %v] (TZ=UTC): %v", m["timestamp"], started, stopped, err)
		}
		for _, k := range []string{"time", "msg", "component"} {
			if _, ok := m[k]; ok {
				t.Errorf("line has slog's %q: %s", k, line)
			}
		}
		msg := m["message"].(string)
		switch {
		case strings.HasPrefix(msg, "Proxy Hopper running on "):
			msg = "started"
		case msg == "request" && m["level"] == "INFO":
			msg = "request refused" // a success is DEBUG
		}
		if _, seen := byMsg[msg]; !seen {
			byMsg[msg] = m
		}
	}
	line := func(msg string) map[string]any {
		m, ok := byMsg[msg]
		if !ok {
			t.Fatalf("no %q line in:\n%s", msg, out)
		}
		return m
	}

	st := line("started")
	wantStart := map[string]any{
		"message": fmt.Sprintf("Proxy Hopper running on %s (backend=redis, auth=enabled)", addr),
		"level":   "INFO", "logger": "proxy_hopper.cli", "version": version,
		"addr": addr, "backend": "redis", "redis": "redis://" + rd.Addr + "/0",
		"auth": "api keys 2, jwt", "targets": 1.0,
		"admin": fmt.Sprintf("127.0.0.1:%d", adminPort), "metrics": fmt.Sprintf("127.0.0.1:%d", metricsPort),
	}
	for k, v := range wantStart {
		if st[k] != v {
			t.Errorf("start-up line: %s = %v, want %v", k, st[k], v)
		}
	}
	var modes []string
	for _, m := range st["modes"].([]any) {
		modes = append(modes, m.(string))
	}
	if want := []string{"explicit/header", "admin", "metrics", "prober"}; !slices.Equal(modes, want) {
		t.Errorf("start-up modes = %v, want %v", modes, want)
	}

	// Logger names of the parts, durations as seconds (a float64: any
	// nanosecond count would be far larger).
	for msg, logger := range map[string]string{
		"metrics listening": "proxy_hopper.metrics",
		"admin listening":   "proxy_hopper.auth.admin",
		"prober started":    "proxy_hopper.prober",
		"request":           "proxy_hopper.handlers",
		"request refused":   "proxy_hopper.handlers",
		"shutting down":     "proxy_hopper.cli",
	} {
		if got := line(msg)["logger"]; got != logger {
			t.Errorf("%q: logger %v, want %s", msg, got, logger)
		}
	}
	if p := line("prober started"); p["interval"] != 1.5 || p["timeout"] != 0.25 {
		t.Errorf("prober durations: interval %v timeout %v, want 1.5 and 0.25 (seconds)", p["interval"], p["timeout"])
	}
	if g := line("shutting down")["grace"]; g != 2.0 {
		t.Errorf("grace = %v, want 2 (seconds)", g)
	}
	if d, ok := line("request")["duration"].(float64); !ok || d <= 0 || d > 10 {
		t.Errorf("request duration = %v, want seconds", line("request")["duration"])
	}
	if l := line("request refused"); l["level"] != "INFO" || l["reason"] != "missing" {
		t.Errorf("refused request line: %v", l)
	}
}
