package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/pool"
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
			// Every rateLimitEvery-th request through it is a 429.
			if s.OK() == 0 || s.Reasons["status_429"] < s.Attempts/rateLimitEvery || s.Failures != s.Reasons["status_429"] {
				t.Errorf("429 IP %s: %d attempts, %d ok, reasons %v", s.Addr, s.Attempts, s.OK(), s.Reasons)
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
	if d := time.Since(t0); d > 20*time.Second { // far below the minute asked for, even on a loaded machine
		t.Errorf("took %s to stop after the interrupt", d)
	}
	if !res.interrupted || !strings.Contains(out.String(), "interrupted after") {
		t.Errorf("interrupt not reported:\n%s", out.String())
	}
	if res.col.clientErrors != 0 {
		t.Errorf("client errors at interrupt: %q", res.col.errorSamples)
	}
}

// The generated config goes through the real loader and resolves to the
// policy the demo relies on.
func TestConfigYAML(t *testing.T) {
	addrs := []string{"127.0.0.1:1001", "127.0.0.1:1002"}
	y := configYAML(8080, "http://127.0.0.1:4000", addrs, []string{roleHealthy, roleDead})
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatalf("load:\n%s\n%v", y, err)
	}
	res, err := cfg.Resolve()
	if err != nil {
		t.Fatalf("resolve:\n%s\n%v", y, err)
	}
	rts := res.Targets
	if cfg.Server.Port != 8080 || cfg.Server.ShutdownTimeout.D() != 2*time.Second || cfg.Server.Probe || cfg.Server.Metrics {
		t.Errorf("server config %+v", cfg.Server)
	}
	if len(rts) != 1 {
		t.Fatalf("%d targets", len(rts))
	}
	rt := rts[0]
	want := pool.Config{MinRequestInterval: minRequestInterval, MaxQueueWait: maxQueueWait, FailuresUntilQuarantine: failuresToQuar, QuarantineTime: quarantineTime,
		MaxQueueLength: 500} // the default
	if rt.Name != targetName || rt.Pool != want || rt.NumRetries != numRetries {
		t.Errorf("target %+v, want pool %+v", rt, want)
	}
	var got []string
	for _, ip := range rt.IPs {
		got = append(got, ip.Addr())
	}
	if !slices.Equal(got, addrs) {
		t.Errorf("IPs %v, want %v", got, addrs)
	}
	for key, match := range map[string]bool{
		"http://127.0.0.1:4000/api/items": true, "http://127.0.0.1:4000": true,
		"http://127.0.0.1:40001/": false, "http://127.0.0.1:4000.evil/": false,
	} {
		if rt.Regex.MatchString(key) != match {
			t.Errorf("regex %s on %s: %v, want %v", rt.Regex, key, !match, match)
		}
	}
}
