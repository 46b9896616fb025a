package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal's master and its terminal.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pty: %v", err)
	}
	return m, s
}

// TestHashPasswordPrompt: on a terminal the password is asked for twice
// with the echo off: what is typed never comes back on the terminal.
func TestHashPasswordPrompt(t *testing.T) {
	bin := buildBinary(t)
	for _, c := range []struct {
		first, second string
		ok            bool
	}{{"typed secret", "typed secret", true}, {"typed secret", "other secret", false}} {
		master, tty := openPTY(t)
		cmd := exec.Command(bin, "hash-password")
		cmd.Stdin = tty
		var stdout strings.Builder
		cmd.Stdout = &stdout
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close() // the child holds it; the master then ends when the child does
		// Bounded: a child that never prompts is killed, failing the reads.
		kill := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
		defer kill.Stop()
		echoed := make(chan string, 1)
		go func() { b, _ := io.ReadAll(master); echoed <- string(b) }() // EIO once the child exits
		prompts := bufio.NewReader(stderr)
		for _, line := range []string{c.first, c.second} {
			p, err := prompts.ReadString(':')
			if err != nil || !strings.Contains(p, "assword:") {
				t.Fatalf("prompt %q: %v", p, err)
			}
			if _, err := master.Write([]byte(line + "\r")); err != nil {
				t.Fatal(err)
			}
		}
		rest, _ := io.ReadAll(prompts)
		err = cmd.Wait()
		out := <-echoed
		master.Close()
		if strings.Contains(out, "secret") {
			t.Errorf("the password was echoed on the terminal: %q", out)
		}
		if !c.ok {
			if err == nil || stdout.Len() != 0 || !strings.Contains(string(rest), "do not match") {
				t.Errorf("mismatch: %v, stdout %q, stderr %q", err, stdout.String(), rest)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %s", err, rest)
		}
		checkHash(t, stdout.String(), c.first)
	}
}
