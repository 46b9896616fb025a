//go:build !linux

package proxy

import "time"

func cpuTime() (time.Duration, bool) { return 0, false }
