package testenv

import (
	"testing"
	"time"
)

// Eventually calls cond until it returns nil and fails t, naming cond's
// last error, if that does not happen within timeout. It polls every
// millisecond at first, backing off to every 10ms, so a condition that
// holds soon is seen at once and a slow one costs little CPU. cond runs on
// the test goroutine and may call t.Fatal itself.
//
// Eventually is for waiting until something happens. It never proves that
// something does not happen: a test that must show that nothing arrived
// says how long it waits, and why that is long enough, where it waits.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	poll := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
			return
		}
		time.Sleep(poll)
		poll = min(2*poll, 10*time.Millisecond)
	}
}
