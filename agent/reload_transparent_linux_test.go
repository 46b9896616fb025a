package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/intercept/local"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestReloadTransparentExcludes: with local transparent mode on, the
// upstream proxies' addresses are kept out of the redirect in the kernel's
// ph_exclude map; a reload that changes the IPs updates that map. The
// programs go on an empty child cgroup of this test only (sockmap off, so
// nothing is attached to the agent's own cgroup); the upstreams are never
// connected to.
func TestReloadTransparentExcludes(t *testing.T) {
	testenv.RequireRoot(t)
	if err := bpf.Probe(); err != nil {
		t.Fatal(err)
	}
	root, err := bpf.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.MkdirTemp(root, fmt.Sprintf("ph-test-reload-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if err := os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", cg)
	})
	path := filepath.Join(t.TempDir(), "config.yaml")
	write := func(ips string) {
		t.Helper()
		body := fmt.Sprintf(`server:
  host: 127.0.0.1
  probe: false
  shutdownTimeout: 1s
targets:
  - name: t
    regex: 'x'
    ipList: [%s]
transparent:
  local:
    enabled: true
    cgroups: [%q]
    ports: [80]
    excludeCidrs: [198.19.0.0/16]
    sockmap: false
    pinDir: /sys/fs/bpf/ph-test-reload-%d
`, ips, cg, os.Getpid())
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`"198.18.7.1:3128"`)
	cfg, err := loadResolved(path)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(context.Background(), cfg, Options{Listener: ln, Logger: discard(), ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	var tp *local.Mode
	deadline := time.Now().Add(10 * time.Second)
	for tp == nil {
		a.reload.mu.Lock()
		tp = a.tp
		a.reload.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("transparent mode did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	excludes := func() int {
		t.Helper()
		n, err := bpf.MapEntries(tp.Objects().PhExclude)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := excludes(); n != 2 {
		t.Fatalf("ph_exclude holds %d entries at start, want 2 (excludeCidrs and the upstream)", n)
	}
	write(`"198.18.7.1:3128", "198.18.7.2:3128", "198.18.7.3:3128"`)
	if _, err := a.ReloadFile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := excludes(); n != 4 {
		t.Errorf("ph_exclude holds %d entries after adding two upstreams, want 4", n)
	}
	write(`"198.18.7.3:3128"`)
	if _, err := a.ReloadFile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := excludes(); n != 2 {
		t.Errorf("ph_exclude holds %d entries after removing two upstreams, want 2", n)
	}
}
