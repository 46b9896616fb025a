//go:build !linux

package pool_test

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }
