package demo

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is an io.Writer the test can read while Run writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun(t *testing.T) {
	var out syncBuffer
	dir := t.TempDir()
	res, err := run(context.Background(), Options{Duration: 3 * time.Second, Out: &out, Plain: true, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Log("\n" + text)
	for _, want := range []string{"UPSTREAM", "ROLE", "STATE", "== Summary", "dead IP", "quarantined", "share of the"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "\x1b[") {
		t.Error("plain output contains ANSI escapes")
	}

	c := res.col
	if c.successes == 0 {
		t.Fatal("no successful request")
	}
	if c.clientErrors != 0 {
		t.Errorf("%d client errors: %q", c.clientErrors, c.errorSamples)
	}
	for code, n := range c.statuses {
		if code != 200 {
			t.Errorf("clients got %d × status %d; every request should end in a 200", n, code)
		}
	}
	if c.successes != c.responses {
		t.Errorf("%d successes of %d responses", c.successes, c.responses)
	}
	if res.originHits < int64(c.successes) {
		t.Errorf("origin served %d requests, fewer than the %d successes", res.originHits, c.successes)
	}
	for _, s := range c.ips {
		switch s.Role {
		case roleHealthy, roleSlow:
			if s.OK() == 0 {
				t.Errorf("%s IP %s served no request", s.Role, s.Addr)
			}
			if s.Failures != 0 {
				t.Errorf("%s IP %s failed %d times: %v", s.Role, s.Addr, s.Failures, s.Reasons)
			}
		case roleDead:
			if s.Failures < failuresToQuar || s.OK() != 0 {
				t.Errorf("dead IP %s: %d failures, %d successes", s.Addr, s.Failures, s.OK())
			}
			if s.Reasons["connect_refused"] != s.Failures {
				t.Errorf("dead IP %s failed with %v, want connect_refused only", s.Addr, s.Reasons)
			}
			if s.Quarantines < 1 {
				t.Errorf("dead IP %s was never seen quarantined", s.Addr)
			}
		case role429:
			if s.OK() == 0 || s.Reasons["status_429"] == 0 {
				t.Errorf("429 IP %s: %d ok, reasons %v", s.Addr, s.OK(), s.Reasons)
			}
		}
	}
	if c.retries == 0 {
		t.Error("no retries, though the dead and 429 IPs fail")
	}
	if res.interrupted {
		t.Error("run reported an interruption")
	}
	logData, err := os.ReadFile(res.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logData), "ip quarantined") {
		t.Error("agent log does not mention the quarantine")
	}
}

// Cancelling ctx ends the demo early, with a summary and no error.
func TestRunInterrupted(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	res, err := run(ctx, Options{Duration: time.Minute, Out: &out, Plain: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("took %s to stop after the interrupt", d)
	}
	if !res.interrupted || !strings.Contains(out.String(), "interrupted after") {
		t.Errorf("interrupt not reported:\n%s", out.String())
	}
	if res.col.clientErrors != 0 {
		t.Errorf("client errors at interrupt: %q", res.col.errorSamples)
	}
}

func TestConfigYAML(t *testing.T) {
	y := configYAML(8080, "http://127.0.0.1:4000", []string{"127.0.0.1:1", "127.0.0.1:2"}, []string{roleHealthy, roleDead})
	for _, want := range []string{
		"port: 8080", `regex: '^http://127\.0\.0\.1:4000(/|$)'`, "minRequestInterval: 200ms",
		"ipFailuresUntilQuarantine: 2", "quarantineTime: 5s", `- "127.0.0.1:2" # dead`,
	} {
		if !strings.Contains(y, want) {
			t.Errorf("config lacks %q:\n%s", want, y)
		}
	}
}
