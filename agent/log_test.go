package agent

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/config"
)

// jsonLines parses every line of buf as one JSON object.
func jsonLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// TestLogHandlerJSONConformance runs slog's own handler tests on the JSON
// handler, reading proxy-hopper's field names as slog's.
func TestLogHandlerJSONConformance(t *testing.T) {
	var buf bytes.Buffer
	h, err := NewLogHandler(&buf, LogHandlerOptions{Level: slog.LevelDebug, Format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	results := func() []map[string]any {
		ms := jsonLines(t, buf.Bytes())
		for _, m := range ms {
			if m["logger"] != "proxy_hopper.cli" {
				t.Errorf("logger = %v, want proxy_hopper.cli", m["logger"])
			}
			delete(m, "logger")
			if v, ok := m["timestamp"]; ok {
				m[slog.TimeKey] = v
				delete(m, "timestamp")
			}
			m[slog.MessageKey] = m["message"]
			delete(m, "message")
		}
		return ms
	}
	if err := slogtest.TestHandler(h, results); err != nil {
		t.Fatal(err)
	}
}

// TestLogHandlerJSON: proxy-hopper's four fields first, in its order and
// formats; the component is the logger; durations are seconds; an
// attribute that would repeat a field is renamed, not lost.
func TestLogHandlerJSON(t *testing.T) {
	var buf bytes.Buffer
	zone := time.FixedZone("X", 2*3600)
	h, err := NewLogHandler(&buf, LogHandlerOptions{Level: config.LevelTrace, Format: "json", Zone: zone})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 4, 5, 6, 7, 890_000_000, time.UTC)
	log := slog.New(h).With("component", "pool", "target", "api")
	rec := slog.NewRecord(at, slog.LevelWarn, "ip quarantined", 0)
	rec.AddAttrs(slog.Duration("for", 1500*time.Millisecond), slog.String("message", "clash"), slog.String("level", "clash"),
		slog.Group("g", slog.Duration("wait", 2*time.Minute), slog.String("message", "inner, kept")))
	if err := log.Handler().Handle(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	line := buf.String()
	const head = `{"timestamp":"2026-03-04T07:06:07","level":"WARNING","logger":"proxy_hopper.pool","message":"ip quarantined",`
	if !strings.HasPrefix(line, head) {
		t.Fatalf("line %s\ndoes not start with %s", line, head)
	}
	m := jsonLines(t, buf.Bytes())[0]
	want := map[string]any{
		"target": "api", "for": 1.5, "attr_message": "clash", "attr_level": "clash",
		"g": map[string]any{"wait": 120.0, "message": "inner, kept"},
	}
	for k, v := range want {
		got, _ := json.Marshal(m[k])
		exp, _ := json.Marshal(v)
		if string(got) != string(exp) {
			t.Errorf("%s = %s, want %s", k, got, exp)
		}
	}
	for _, k := range []string{"time", "msg", "component"} {
		if _, ok := m[k]; ok {
			t.Errorf("line has slog's %q: %s", k, line)
		}
	}
	if len(m) != 4+len(want) {
		t.Errorf("line has %d fields, want %d: %s", len(m), 4+len(want), line)
	}

	// Levels as proxy-hopper names them; a component given with the line
	// wins; one inside a group is an attribute like any other.
	for _, c := range []struct {
		level slog.Level
		want  string
	}{{config.LevelTrace, "TRACE"}, {slog.LevelDebug, "DEBUG"}, {slog.LevelInfo, "INFO"}, {slog.LevelWarn, "WARNING"}, {slog.LevelError, "ERROR"}} {
		buf.Reset()
		slog.New(h).Log(t.Context(), c.level, "x", "component", "prober")
		m := jsonLines(t, buf.Bytes())[0]
		if m["level"] != c.want || m["logger"] != "proxy_hopper.prober" {
			t.Errorf("level %v: %v", c.level, m)
		}
	}
	buf.Reset()
	slog.New(h).With("component", "admin").WithGroup("req").With("component", "inner").Info("x")
	m = jsonLines(t, buf.Bytes())[0]
	if m["logger"] != "proxy_hopper.auth.admin" || m["req"].(map[string]any)["component"] != "inner" {
		t.Errorf("grouped component: %v", m)
	}
}

// TestLogHandlerText: slog's key=value lines with proxy-hopper's level
// names, the logger after msg, durations in seconds.
func TestLogHandlerText(t *testing.T) {
	var buf bytes.Buffer
	h, err := NewLogHandler(&buf, LogHandlerOptions{Format: "text"})
	if err != nil {
		t.Fatal(err)
	}
	slog.New(h).With("component", "redis").Warn("redis unavailable", "wait", 250*time.Millisecond, "logger", "clash", "grace", 30*time.Second)
	line := buf.String()
	want := ` level=WARNING msg="redis unavailable" logger=proxy_hopper_redis.backend wait=0.25s attr_logger=clash grace=30s` + "\n"
	if !strings.HasPrefix(line, "time=") || !strings.HasSuffix(line, want) {
		t.Errorf("line %q\nwant time=… %q", line, want)
	}
	buf.Reset()
	slog.New(h).Debug("hidden")
	if buf.Len() != 0 {
		t.Errorf("DEBUG written at INFO: %q", buf.String())
	}
	if _, err := NewLogHandler(&buf, LogHandlerOptions{Format: "xml"}); err == nil {
		t.Error("format xml accepted")
	}
}

// TestLoggerName: our components as proxy-hopper's module loggers; our
// own parts under proxy_hopper., bounded and one word.
func TestLoggerName(t *testing.T) {
	for comp, want := range map[string]string{
		"":                       "proxy_hopper.cli",
		"proxy":                  "proxy_hopper.handlers",
		"pool":                   "proxy_hopper.pool",
		"prober":                 "proxy_hopper.prober",
		"metrics":                "proxy_hopper.metrics",
		"admin":                  "proxy_hopper.auth.admin",
		"auth":                   "proxy_hopper.auth",
		"redis":                  "proxy_hopper_redis.backend",
		"go-redis":               "proxy_hopper_redis.client",
		"transparent":            "proxy_hopper.transparent",
		"gateway":                "proxy_hopper.gateway",
		"Odd name\n":             "proxy_hopper.odd_name_",
		strings.Repeat("a", 100): "proxy_hopper." + strings.Repeat("a", 32),
	} {
		if got := LoggerName(comp); got != want {
			t.Errorf("LoggerName(%q) = %q, want %q", comp, got, want)
		}
	}
}

// TestStartupDescriptions: the start-up line's auth state and Redis
// address (never its credentials or options).
func TestStartupDescriptions(t *testing.T) {
	for _, c := range []struct {
		cfg  auth.Config
		want string
	}{
		{auth.Config{APIKeys: []auth.APIKey{{Name: "a"}}, JWTSecret: "s"}, "off"},
		{auth.Config{Enabled: true}, "on, no credentials accepted"},
		{auth.Config{Enabled: true, APIKeys: []auth.APIKey{{Name: "a"}, {Name: "b"}, {Name: "c"}}}, "api keys 3"},
		{auth.Config{Enabled: true, JWTSecret: "s", OIDC: &auth.OIDC{Issuer: "https://u:p@idp.example/realms/x"},
			Admins: []auth.AdminUser{{Username: "root"}}}, "jwt, oidc https://idp.example/realms/x, admin login"},
	} {
		if got := authState(c.cfg); got != c.want {
			t.Errorf("authState(%+v) = %q, want %q", c.cfg, got, c.want)
		}
	}
	for raw, want := range map[string]string{
		"redis://:pw@10.0.0.5:6379/2":              "redis://10.0.0.5:6379/2",
		"rediss://user:pw@[::1]:6380/0?password=x": "rediss://[::1]:6380/0",
		"unix://:pw@/run/redis.sock?db=1":          "unix:///run/redis.sock",
		"redis://%zz":                              "(unparsable url)",
	} {
		if got := redisAddress(raw); got != want {
			t.Errorf("redisAddress(%q) = %q, want %q", raw, got, want)
		}
	}
}
