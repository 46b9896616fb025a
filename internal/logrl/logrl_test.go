package logrl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// syncBuffer is a log destination safe for the timer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines decodes the JSON log lines written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(s.b.Bytes()), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func newTest(t *testing.T, o Options) (*Limiter, *syncBuffer, *pool.FakeClock) {
	t.Helper()
	buf := &syncBuffer{}
	clk := pool.NewFakeClock(time.Unix(1_000_000, 0))
	o.Now = clk.Now
	o.AfterFunc = func(d time.Duration, f func()) func() bool { return clk.AfterFunc(d, f).Stop }
	log := slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return New(log, o), buf, clk
}

func count(lines []map[string]any, msg string) int {
	n := 0
	for _, l := range lines {
		if l["msg"] == msg {
			n++
		}
	}
	return n
}

func summaries(lines []map[string]any) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["msg"] == "log lines suppressed" {
			out = append(out, l)
		}
	}
	return out
}

// TestFloodSummarised: 2,000 lines of one key in one interval write Burst
// of them and, when the interval ends, one summary with the rest's count.
func TestFloodSummarised(t *testing.T) {
	l, buf, clk := newTest(t, Options{Burst: 5, Interval: time.Minute, KeyAttr: "reason"})
	ctx := context.Background()
	for i := 0; i < 2000; i++ {
		l.Log(ctx, slog.LevelInfo, "missing", "request refused", "i", i)
	}
	lines := buf.lines(t)
	if n := count(lines, "request refused"); n != 5 || len(lines) != 5 {
		t.Fatalf("during the interval: %d refusal lines, %d lines in all; want 5 and 5", n, len(lines))
	}
	clk.Advance(time.Minute)
	lines = buf.lines(t)
	sums := summaries(lines)
	if len(sums) != 1 || len(lines) != 6 {
		t.Fatalf("after the interval: %d summaries, %d lines; want 1 and 6: %v", len(sums), len(lines), lines)
	}
	s := sums[0]
	if s["suppressed"] != float64(1995) || s["reason"] != "missing" || s["suppressed_message"] != "request refused" || s["level"] != "INFO" {
		t.Fatalf("summary = %v", s)
	}
	// The next interval starts afresh, and no second summary comes.
	l.Log(ctx, slog.LevelInfo, "missing", "request refused")
	clk.Advance(time.Hour)
	lines = buf.lines(t)
	if n, s := count(lines, "request refused"), len(summaries(lines)); n != 6 || s != 1 {
		t.Fatalf("next interval: %d refusal lines, %d summaries; want 6 and 1", n, s)
	}
}

// TestSummaryOnNextLine: a line after the interval writes the pending
// summary itself (the timer may not have run yet); the timer then adds none.
func TestSummaryOnNextLine(t *testing.T) {
	l, buf, clk := newTest(t, Options{Burst: 1, Interval: time.Second})
	ctx := context.Background()
	now := clk.Now()
	// A separate limiter sharing nothing with clk's timers: move its clock
	// without firing them.
	l.o.Now = func() time.Time { return now }
	for i := 0; i < 4; i++ {
		l.Log(ctx, slog.LevelWarn, "k", "boom")
	}
	now = now.Add(2 * time.Second)
	l.Log(ctx, slog.LevelWarn, "k", "boom")
	lines := buf.lines(t)
	sums := summaries(lines)
	if len(sums) != 1 || sums[0]["suppressed"] != float64(3) || sums[0]["key"] != "k" || sums[0]["level"] != "WARN" {
		t.Fatalf("summaries = %v", sums)
	}
	if n := count(lines, "boom"); n != 2 {
		t.Fatalf("%d lines written, want 2", n)
	}
	if clk.Pending() != 0 {
		t.Fatalf("%d summary timers still pending", clk.Pending())
	}
	clk.Advance(time.Minute)
	if n := len(summaries(buf.lines(t))); n != 1 {
		t.Fatalf("%d summaries, want 1", n)
	}
}

// TestKeysBounded: thousands of distinct keys share OtherKey beyond
// MaxKeys, so neither the state nor the log grows with them.
func TestKeysBounded(t *testing.T) {
	l, buf, clk := newTest(t, Options{Burst: 2, MaxKeys: 8})
	ctx := context.Background()
	for i := 0; i < 5000; i++ {
		l.Log(ctx, slog.LevelInfo, fmt.Sprintf("key-%d", i), "line")
	}
	if n := len(l.keys); n > 9 {
		t.Fatalf("%d keys tracked, want at most 9", n)
	}
	// key-0 … key-7 one line each, then OtherKey its burst of 2.
	if n := count(buf.lines(t), "line"); n != 8+2 {
		t.Fatalf("%d lines written, want %d", n, 8+2)
	}
	clk.Advance(time.Minute)
	sums := summaries(buf.lines(t))
	if len(sums) != 1 || sums[0]["key"] != OtherKey || sums[0]["suppressed"] != float64(5000-10) {
		t.Fatalf("summaries = %v", sums)
	}
}

// TestDisabledLevelNotCounted: lines below the logger's level are neither
// written nor summarised.
func TestDisabledLevelNotCounted(t *testing.T) {
	l, buf, clk := newTest(t, Options{Burst: 1})
	for i := 0; i < 100; i++ {
		l.Log(context.Background(), slog.LevelDebug, "k", "quiet")
	}
	clk.Advance(time.Hour)
	if lines := buf.lines(t); len(lines) != 0 {
		t.Fatalf("lines = %v", lines)
	}
}

// TestFlush writes pending summaries at once.
func TestFlush(t *testing.T) {
	l, buf, clk := newTest(t, Options{Burst: 1})
	for i := 0; i < 10; i++ {
		l.Log(context.Background(), slog.LevelInfo, "a", "x")
		l.Log(context.Background(), slog.LevelInfo, "b", "y")
	}
	l.Flush()
	sums := summaries(buf.lines(t))
	if len(sums) != 2 || sums[0]["suppressed"] != float64(9) || sums[1]["suppressed"] != float64(9) {
		t.Fatalf("summaries = %v", sums)
	}
	if clk.Pending() != 0 {
		t.Fatalf("%d timers pending after Flush", clk.Pending())
	}
}
