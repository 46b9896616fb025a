package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// lockedBuffer is a log destination shared by the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, ln := range bytes.Split(bytes.TrimSpace(l.b.Bytes()), []byte("\n")) {
		if len(ln) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(ln, &m); err != nil {
			t.Fatalf("log line %q: %v", ln, err)
		}
		out = append(out, m)
	}
	return out
}

// TestRefusalFloodLogRateLimited floods the agent with 2,000 refused
// requests (1,000 header-mode requests without a token, 1,000 CONNECTs
// with a wrong one): the log gets RequestLogBurst lines per refusal reason
// and, once flushed, one summary per reason with the count of the rest;
// the request hook (the metrics) sees every one.
func TestRefusalFloodLogRateLimited(t *testing.T) {
	const burst, each = 5, 1000
	buf := &lockedBuffer{}
	var mu sync.Mutex
	refused := map[string]int{}
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{
		Auth:               mustAuth(t, auth.Config{Enabled: true, APIKeys: []auth.APIKey{{Name: "k", Key: "good-key", Targets: []string{"*"}}}}),
		Logger:             slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})),
		RequestLogBurst:    burst,
		RequestLogInterval: time.Hour, // the summaries come from Flush below
		Hooks: Hooks{Request: func(ev RequestEvent) {
			mu.Lock()
			refused[ev.AuthReason]++
			mu.Unlock()
		}},
	}})
	for i := range each {
		if got := statusLine(rawRequest(t, e.addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Proxy-Hopper-Target: http://127.0.0.1:1\r\n\r\n")); !strings.Contains(got, " 401 ") {
			t.Fatalf("request %d: %q, want 401", i, got)
		}
		if got := statusLine(rawRequest(t, e.addr, "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nX-Proxy-Hopper-Auth: Bearer wrong\r\n\r\n")); !strings.Contains(got, " 407 ") {
			t.Fatalf("CONNECT %d: %q, want 407", i, got)
		}
	}
	// The hook runs after the answer is written: wait for the last ones.
	testenv.Eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !(refused[auth.ReasonMissing] == each && refused[auth.ReasonInvalid] == each) {
			return errors.New("still waiting for every refusal counted")
		}
		return nil
	})
	lines := buf.lines(t)
	if len(lines) != 2*burst {
		t.Fatalf("%d log lines for %d refusals, want %d", len(lines), 2*each, 2*burst)
	}
	byReason := map[string]int{}
	for _, l := range lines {
		if l["level"] != "INFO" || l["client"] == nil || l["client"] == "" {
			t.Errorf("refusal line %v: want INFO with the client", l)
		}
		byReason[l["reason"].(string)]++
	}
	if byReason[auth.ReasonMissing] != burst || byReason[auth.ReasonInvalid] != burst {
		t.Errorf("lines by reason = %v, want %d each", byReason, burst)
	}
	e.srv.reqLog.Flush()
	lines = buf.lines(t)[2*burst:]
	sums := map[string]float64{}
	for _, l := range lines {
		if l["msg"] != "log lines suppressed" {
			t.Errorf("unexpected line %v", l)
			continue
		}
		sums[l["reason"].(string)] = l["suppressed"].(float64)
	}
	if len(lines) != 2 || sums[auth.ReasonMissing] != each-burst || sums[auth.ReasonInvalid] != each-burst {
		t.Errorf("summaries = %v, want %d suppressed for each reason", lines, each-burst)
	}
}
