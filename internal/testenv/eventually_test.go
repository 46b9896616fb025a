package testenv

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the goroutine, as testing.T's does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runEventually runs Eventually on its own goroutine (a failure ends it)
// and returns the failure message, empty when cond came to hold.
func runEventually(t *testing.T, timeout time.Duration, cond func() error) string {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Eventually(r, timeout, cond)
	}()
	<-done
	return r.msg
}

// TestEventuallyWaits: a condition that comes to hold is waited for, and
// Eventually returns as soon as it holds.
func TestEventuallyWaits(t *testing.T) {
	calls := 0
	msg := runEventually(t, 5*time.Second, func() error {
		if calls++; calls < 5 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if msg != "" {
		t.Fatalf("failed on a condition that held at the 5th call: %s", msg)
	}
	if calls != 5 {
		t.Fatalf("cond called %d times, want 5 (no call after it held)", calls)
	}
}

// TestEventuallyFailsNamingLastError: a condition that never holds fails
// the test after the timeout, with the last error cond returned.
func TestEventuallyFailsNamingLastError(t *testing.T) {
	calls := 0
	start := time.Now()
	msg := runEventually(t, 100*time.Millisecond, func() error {
		calls++
		return fmt.Errorf("%d connections open", calls)
	})
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("gave up after %s, want the 100ms timeout", d)
	}
	want := fmt.Sprintf("not within 100ms: %d connections open", calls)
	if msg != want {
		t.Fatalf("failure message %q, want %q", msg, want)
	}
	if calls < 2 {
		t.Fatalf("cond called %d times in 100ms", calls)
	}
}

// TestEventuallyChecksOnce: a condition is checked at least once even
// with no time to wait, and the failure names the error.
func TestEventuallyChecksOnce(t *testing.T) {
	if msg := runEventually(t, 0, func() error { return nil }); msg != "" {
		t.Fatalf("failed on a condition that held: %s", msg)
	}
	msg := runEventually(t, 0, func() error { return errors.New("redis down") })
	if !strings.HasSuffix(msg, ": redis down") {
		t.Fatalf("failure message %q does not name the error", msg)
	}
}
