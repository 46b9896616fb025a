//go:build !linux

package testenv

import (
	"os/exec"
	"testing"
	"time"
)

// Netns is a test network namespace (Linux only).
type Netns struct{ Name, Path string }

func (n *Netns) tinyproxyCommand(t testing.TB, _, _, _, _ string) *exec.Cmd {
	t.Fatal("network namespaces need Linux")
	return nil
}

// WaitListening is not available outside Linux.
func (n *Netns) WaitListening(t testing.TB, _ string, _ time.Duration) {
	t.Fatal("network namespaces need Linux")
}
