package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// lockedBuf collects a process's output while the test reads it.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRunReloadsOnSIGHUP drives the built binary: a rewritten config does
// nothing until SIGHUP, which applies it (with the CLI flags the agent was
// started with still in force) on the client's same keep-alive connection;
// an invalid config on SIGHUP is rejected and the running one keeps serving.
func TestRunReloadsOnSIGHUP(t *testing.T) {
	bin := buildBinary(t)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "via %s", ip)
	}))
	defer origin.Close()
	A := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{Extra: "Bind 127.0.0.2\n"})
	B := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{Extra: "Bind 127.0.0.3\n"})
	conf := func(ip string) string {
		return fmt.Sprintf(`
server:
  host: 127.0.0.1
  probe: false
targets:
  - name: local
    regex: '127\.0\.0\.1'
    ipList: ["%s"]
    minRequestInterval: 0
`, ip)
	}
	cfg := writeConfig(t, conf(A.Addr))
	port := testenv.FreePort(t, "127.0.0.1")
	logs := &lockedBuf{}
	cmd := exec.Command(bin, "run", "--config", cfg, "--port", fmt.Sprint(port))
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testenv.WaitListening(t, addr, 10*time.Second)

	var dials atomic.Int32
	proxyURL, _ := url.Parse("http://" + addr)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		MaxConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}}
	via := func() string {
		t.Helper()
		resp, err := hc.Get(origin.URL + "/x")
		if err != nil {
			t.Fatalf("request: %v\nlogs:\n%s", err, logs.String())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("request: %d %s\nlogs:\n%s", resp.StatusCode, b, logs.String())
		}
		return strings.TrimPrefix(string(b), "via ")
	}
	if got := via(); got != "127.0.0.2" {
		t.Fatalf("before the reload: via %s", got)
	}
	if err := os.WriteFile(cfg, []byte(conf(B.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := via(); got != "127.0.0.2" {
		t.Fatalf("the rewritten file applied without SIGHUP (no --watch-config): via %s", got)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if got := via(); got != "127.0.0.3" {
			return fmt.Errorf("SIGHUP did not apply the new IP list: via %s\nlogs:\n%s", got, logs.String())
		}
		return nil
	})
	if l := logs.String(); !strings.Contains(l, "config reloaded") || !strings.Contains(l, "ips_added=1") || !strings.Contains(l, "ips_removed=1") {
		t.Errorf("no reload summary in the logs:\n%s", l)
	}
	if l := logs.String(); strings.Contains(l, "only take effect after a restart") {
		t.Errorf("the reload lost the --port flag (restart-only keys reported):\n%s", l)
	}

	// An invalid config: rejected, logged with validate's message, and the
	// running one keeps serving.
	if err := os.WriteFile(cfg, []byte("targets:\n  - {name: local, regex: '(', ipList: []}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(logs.String(), "config reload rejected") {
			return fmt.Errorf("invalid config on SIGHUP not reported\nlogs:\n%s", logs.String())
		}
		return nil
	})
	vout, _ := exec.Command(bin, "validate", "--config", cfg).CombinedOutput()
	reason := strings.TrimSpace(strings.TrimPrefix(string(vout), "proxy-hopper: "))
	if !strings.Contains(logs.String(), fmt.Sprintf("reason=%q", reason)) {
		t.Errorf("rejection does not carry validate's message %q:\n%s", reason, logs.String())
	}
	if got := via(); got != "127.0.0.3" {
		t.Errorf("after a rejected reload: via %s, want the running config's 127.0.0.3", got)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("the client dialled %d times, want 1 keep-alive connection across the reloads", n)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\nlogs:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("agent did not exit after SIGTERM\nlogs:\n%s", logs.String())
	}
}

// TestRunWatchConfigFlag: with --watch-config the binary applies a config
// file replaced by rename, without a signal.
func TestRunWatchConfigFlag(t *testing.T) {
	bin := buildBinary(t)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "via %s", ip)
	}))
	defer origin.Close()
	A := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{Extra: "Bind 127.0.0.2\n"})
	B := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{Extra: "Bind 127.0.0.3\n"})
	conf := func(ip string) string {
		return fmt.Sprintf("targets:\n  - {name: local, regex: '127\\.0\\.0\\.1', ipList: [%q], minRequestInterval: 0}\n", ip)
	}
	cfg := writeConfig(t, conf(A.Addr))
	port := testenv.FreePort(t, "127.0.0.1")
	logs := &lockedBuf{}
	cmd := exec.Command(bin, "run", "--config", cfg, "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--watch-config")
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testenv.WaitListening(t, addr, 10*time.Second)
	proxyURL, _ := url.Parse("http://" + addr)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	via := func() string {
		resp, err := hc.Get(origin.URL + "/x")
		if err != nil {
			t.Fatalf("request: %v\nlogs:\n%s", err, logs.String())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimPrefix(string(b), "via ")
	}
	if got := via(); got != "127.0.0.2" {
		t.Fatalf("before the change: via %s", got)
	}
	tmp := cfg + ".new"
	if err := os.WriteFile(tmp, []byte(conf(B.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, cfg); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if got := via(); got != "127.0.0.3" {
			return fmt.Errorf("--watch-config did not apply the renamed file: via %s\nlogs:\n%s", got, logs.String())
		}
		return nil
	})
	if !strings.Contains(logs.String(), "config file changed") {
		t.Errorf("no watcher log line:\n%s", logs.String())
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
}

// TestSIGTERMDuringSlowReload: the config file is swapped for a FIFO whose
// writer trickles bytes and never finishes, then SIGHUP starts a reload
// that reads it. SIGTERM still stops the agent at once (exit 0): shutdown
// does not wait for the reload's read.
func TestSIGTERMDuringSlowReload(t *testing.T) {
	bin := buildBinary(t)
	cfg := writeConfig(t, `
server:
  host: 127.0.0.1
  probe: false
targets:
  - name: local
    regex: '.*'
    ipList: ["127.0.0.2:3128"]
`)
	port := testenv.FreePort(t, "127.0.0.1")
	logs := &lockedBuf{}
	cmd := exec.Command(bin, "run", "--config", cfg, "--port", fmt.Sprint(port))
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	testenv.WaitListening(t, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)

	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(cfg, os.O_RDWR, 0) // the writer stays
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := w.WriteString("#\n"); err != nil {
					return
				}
			}
		}
	}()
	// The listener is up a moment before the agent starts taking SIGHUP
	// (one before is dropped): send it until the agent says it reloads.
	next := time.Now()
	testenv.Eventually(t, 10*time.Second, func() error {
		if strings.Contains(logs.String(), "SIGHUP: reloading") {
			return nil
		}
		if time.Now().After(next) {
			if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			next = time.Now().Add(500 * time.Millisecond)
		}
		return fmt.Errorf("SIGHUP not seen\nlogs:\n%s", logs.String())
	})
	time.Sleep(300 * time.Millisecond) // the reload is reading the FIFO
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\nlogs:\n%s", err, logs.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("agent did not exit within 5s of SIGTERM during a reload\nlogs:\n%s", logs.String())
	}
}
