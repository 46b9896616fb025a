package benchutil

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Isolate makes the running harness continue inside the private network
// namespace of scripts/isolated.sh (only loopback up), so nothing it starts
// can send a packet off this machine: unless it already runs there, it
// re-executes itself through that script and does not return. Call it
// first in main, from the repository root.
func Isolate() error {
	if os.Getenv("PH_ISOLATED") == "1" {
		return nil
	}
	script, err := filepath.Abs(filepath.Join("scripts", "isolated.sh"))
	if err != nil {
		return fmt.Errorf("isolate: %w", err)
	}
	if _, err := os.Stat(script); err != nil {
		return fmt.Errorf("isolate: run from the repository root: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("isolate: %w", err)
	}
	args := append([]string{script, exe}, os.Args[1:]...)
	return fmt.Errorf("isolate: exec %s: %w", script, syscall.Exec(script, args, os.Environ()))
}
