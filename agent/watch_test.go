package agent

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestEarlySIGHUPReloads: a SIGHUP that reaches the caller's channel
// before the agent takes reloads (cmd registers it before it loads the
// config; Run starts reloads after the listeners and transparent modes)
// is not lost: it reloads the config once Run takes reloads.
func TestEarlySIGHUPReloads(t *testing.T) {
	clearEnv(t)
	const server = "server:\n  probe: false\n"
	const a1 = "targets:\n  - {name: a, regex: 'a\\.invalid', ipList: [\"127.0.0.2:3128\"]}\n"
	const b1 = "  - {name: b, regex: 'b\\.invalid', ipList: [\"127.0.0.3:3128\"]}\n"
	path := writeConfig(t, server+a1)
	res, err := loadResolved(path)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	a, err := New(context.Background(), res, Options{Listener: ln, Logger: discard(), ConfigPath: path, Hangup: hup})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	// The file changes and SIGHUP arrives during start-up, before Run.
	if err := os.WriteFile(path, []byte(server+a1+b1), 0o600); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Targets()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the early SIGHUP did not reload: %d target(s)", len(a.Targets()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := a.Targets()[1].Name; got != "b" {
		t.Errorf("added target %q, want b", got)
	}
}
