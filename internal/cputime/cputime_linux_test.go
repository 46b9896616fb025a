package cputime

import (
	"os"
	"testing"
	"time"
)

func TestSelfAndProcAgree(t *testing.T) {
	start, ok := Self()
	if !ok {
		t.Fatal("Self failed")
	}
	// Burn CPU until Self has moved by 100ms (the machine may be loaded,
	// so wall time says little); it must within a few seconds.
	var self time.Duration
	for end := time.Now().Add(5 * time.Second); ; {
		if self, ok = Self(); !ok {
			t.Fatal("Self failed")
		}
		if self-start >= 100*time.Millisecond {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("Self moved by %v in 5s of spinning", self-start)
		}
	}
	proc, ok := Proc(os.Getpid())
	if !ok {
		t.Fatal("Proc failed")
	}
	// /proc counts in 10ms ticks and reads a little later.
	if d := proc - self; d < -20*time.Millisecond || d > 200*time.Millisecond {
		t.Errorf("Proc = %v, Self = %v", proc, self)
	}
	if _, ok := Proc(-1); ok {
		t.Error("Proc(-1) succeeded")
	}
}
