package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A config file (or caFile) over MaxConfigBytes is refused with an error
// naming the limit, after reading no more than the limit: /dev/zero fails
// at once without growing the heap by more than a few times the limit.
func TestLoadBoundsTheFile(t *testing.T) {
	clearEnv(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err := Load("/dev/zero", nil)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than the 4 MiB limit") {
		t.Fatalf("Load(/dev/zero): %v", err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 64<<20 {
		t.Errorf("reading /dev/zero allocated %d MiB", grown>>20)
	}
	t.Logf("/dev/zero refused in %s, %d KiB allocated", time.Since(start), (after.TotalAlloc-before.TotalAlloc)>>10)

	body := "targets:\n  - {name: a, regex: '.*', ipList: [\"127.0.0.2\"]}\n"
	pad := "#" + strings.Repeat("x", 1023) + "\n"
	under := writeConfig(t, body+strings.Repeat(pad, (MaxConfigBytes-len(body))/len(pad)))
	if _, err := Load(under, nil); err != nil {
		t.Fatalf("config under the limit: %v", err)
	}
	over := writeConfig(t, body+strings.Repeat(pad, MaxConfigBytes/len(pad)+1))
	if _, err := Load(over, nil); err == nil || !strings.Contains(err.Error(), "4 MiB limit") {
		t.Fatalf("config over the limit: %v", err)
	}
	ca := writeConfig(t, body)
	caCfg := strings.Replace(body, "ipList", "caFile: /dev/zero, ipList", 1)
	if err := os.WriteFile(ca, []byte(caCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(ca, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resolve(); err == nil || !strings.Contains(err.Error(), "4 MiB limit") {
		t.Fatalf("caFile /dev/zero: %v", err)
	}
}

// A config that is a FIFO: no writer reads as empty (no hang in open); a
// writer that never finishes is cut when the context ends.
func TestLoadFIFO(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := Load(path, nil); done <- err }()
	select {
	case <-done: // read as an empty file
	case <-time.After(5 * time.Second):
		t.Fatal("Load hangs on a FIFO without a writer")
	}

	w, err := os.OpenFile(path, os.O_RDWR, 0) // a writer that stays
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("targets:\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, err := LoadContext(ctx, path, nil); done <- err }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("LoadContext cut by its context: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("LoadContext does not end with its context")
	}
}
