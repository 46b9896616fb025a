//go:build !linux

package redis_test

import "time"

func selfCPU() (time.Duration, bool)    { return 0, false }
func procCPU(int) (time.Duration, bool) { return 0, false }
