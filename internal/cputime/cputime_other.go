//go:build !linux

package cputime

import "time"

// Self is not measured on this system.
func Self() (time.Duration, bool) { return 0, false }

// Proc is not measured on this system.
func Proc(int) (time.Duration, bool) { return 0, false }
