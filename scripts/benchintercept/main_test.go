package main

import (
	"testing"
	"time"
)

// The histogram's quantiles are within its 1/16 bucket width of the exact
// ones, at every scale the load runs see.
func TestHistQuantile(t *testing.T) {
	for _, scale := range []time.Duration{time.Microsecond, 37 * time.Microsecond, time.Millisecond, 3 * time.Second} {
		var h hist
		for i := 1; i <= 1000; i++ {
			h.add(time.Duration(i) * scale)
		}
		for _, c := range []struct {
			q    float64
			want time.Duration
		}{{0.5, 500 * scale}, {0.99, 990 * scale}, {0, scale}, {1, 1000 * scale}} {
			got := h.quantile(c.q)
			if d := float64(got-c.want) / float64(c.want); d < -1.0/16 || d > 1.0/16 {
				t.Errorf("scale %s: quantile(%v) = %s, want %s ± 1/16", scale, c.q, got, c.want)
			}
		}
	}
	var empty hist
	if empty.quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
	var a, b hist
	a.add(time.Millisecond)
	b.add(time.Second)
	b.add(time.Second)
	a.merge(&b)
	if got := a.quantile(0.5); got < 900*time.Millisecond || got > 1100*time.Millisecond {
		t.Errorf("merged median %s, want about 1s", got)
	}
}
