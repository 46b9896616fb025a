package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestRunGracefulShutdown drives the agent as `run` does: with one IP and
// a slow origin, one request is in flight and a second waits for the IP
// when the context ends. The waiting one gets 503 server_shutdown at once,
// the in-flight one completes, and Run returns nil.
func TestRunGracefulShutdown(t *testing.T) {
	var arrived atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		time.Sleep(800 * time.Millisecond)
		fmt.Fprint(w, "slow hello")
	}))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server:
  shutdownTimeout: 5s
  probe: false
targets:
  - name: one
    regex: '.*'
    ipList: ["%s"]
    minRequestInterval: 0
    maxQueueWait: 20s
`, tp.Addr)), 0o600)
	a, ln := newFileAgent(t, cfgPath)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	get := func() (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
		req.Header.Set(proxy.HeaderTarget, origin.URL)
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	first, queued := make(chan string, 1), make(chan string, 1)
	go func() {
		code, body, err := get()
		first <- fmt.Sprint(code, " ", body, " ", err)
	}()
	testenv.Eventually(t, 5*time.Second, func() error { // the first holds the only IP
		if arrived.Load() == 0 {
			return errors.New("the first request is not at the origin")
		}
		return nil
	})
	go func() {
		code, body, err := get()
		var doc struct{ Error string }
		json.Unmarshal([]byte(body), &doc)
		queued <- fmt.Sprint(code, " ", doc.Error, " ", err)
	}()
	testenv.Eventually(t, 5*time.Second, func() error { // the second is queued
		if n := a.backend.(interface{ Waiting(string) int }).Waiting("one"); n != 1 {
			return fmt.Errorf("%d requests waiting for an IP, want 1", n)
		}
		return nil
	})
	start := time.Now()
	cancel()
	select {
	case got := <-queued:
		if got != "503 server_shutdown <nil>" {
			t.Errorf("queued request: %s", got)
		}
		if time.Since(start) > 300*time.Millisecond {
			t.Errorf("queued request answered after %s, want at once", time.Since(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued request not answered")
	}
	if got := <-first; got != "200 slow hello <nil>" {
		t.Errorf("in-flight request: %s", got)
	}
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Errorf("listener still accepting after Run returned")
	}
}

// newFileAgent loads cfgPath and builds an agent on a fresh loopback
// listener, as `run` would (without starting it).
func newFileAgent(t *testing.T, cfgPath string) (*Agent, net.Listener) {
	t.Helper()
	cfg, err := loadResolved(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(context.Background(), cfg, Options{Listener: ln, Logger: discard()})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	return a, ln
}

// writeMetricsConfig writes a config whose server block listens on
// loopback with /metrics on a free port, followed by rest (more server
// lines, then the other sections); it returns the file and that port.
func writeMetricsConfig(t *testing.T, rest string) (cfgPath string, metricsPort int) {
	t.Helper()
	metricsPort = testenv.FreePort(t, "127.0.0.1")
	cfgPath = filepath.Join(t.TempDir(), "config.yaml")
	body := fmt.Sprintf("\nserver:\n  host: 127.0.0.1\n  metrics: true\n  metricsPort: %d\n", metricsPort) + rest
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, metricsPort
}

// runInBackground runs a until stop, which ends Run, waits for it and
// fails the test on its error; stop runs once (the test's cleanup calls
// it too).
func runInBackground(t *testing.T, a *Agent) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// runMetricsAgent builds the agent of cfgPath, runs it and waits for its
// metrics listener on metricsPort. It returns the agent, its proxy listener,
// the metrics address and stop, which ends Run and returns its error
// (once; later calls return the same). The test's cleanup stops the agent
// if the test did not, and Run must then return nil.
func runMetricsAgent(t *testing.T, cfgPath string, metricsPort int) (a *Agent, ln net.Listener, metricsAddr string, stop func() error) {
	t.Helper()
	a, ln = newFileAgent(t, cfgPath)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-runErr })
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	metricsAddr = net.JoinHostPort("127.0.0.1", fmt.Sprint(metricsPort))
	testenv.WaitListening(t, metricsAddr, 5*time.Second)
	return a, ln, metricsAddr, stop
}

// failingListener fails its first Accept with an error that is not a
// temporary network error, so the proxy server's Serve gives up.
type failingListener struct{ net.Listener }

func (failingListener) Accept() (net.Conn, error) { return nil, errors.New("accept exploded") }

// runAgentConfig writes body and builds an agent serving on ln.
func runAgentConfig(t *testing.T, body string, ln net.Listener) *Agent {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := loadResolved(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(context.Background(), res, Options{Listener: ln, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// runReturns runs a and waits (bounded) for Run to return by itself.
func runReturns(t *testing.T, a *Agent) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func refused(t *testing.T, what, addr string) {
	t.Helper()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s %s still accepting after Run returned", what, addr)
	}
}

// TestRunServeErrorShutsDown: when the proxy server fails, Run takes the
// same shutdown path as on a stop: it returns the server's error and
// leaves nothing listening (metrics included).
func TestRunServeErrorShutsDown(t *testing.T) {
	mport := testenv.FreePort(t, "127.0.0.1")
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := runAgentConfig(t, fmt.Sprintf(`
server:
  probe: false
  metrics: true
  metricsHost: 127.0.0.1
  metricsPort: %d
targets:
  - name: one
    regex: '.*'
    ipList: ["127.0.0.9:1"]
`, mport), failingListener{ln})
	err = runReturns(t, a)
	if err == nil || !strings.Contains(err.Error(), "serve: accept exploded") {
		t.Fatalf("Run: %v, want the serve error", err)
	}
	refused(t, "proxy listener", ln.Addr().String())
	refused(t, "metrics", fmt.Sprintf("127.0.0.1:%d", mport))
	actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Targets()[0].Pool.Acquire(actx); err == nil {
		t.Error("pool still hands out IPs after Run returned")
	}
}

// TestRunStartFailureReleases: a part that cannot start (the admin port is
// taken) fails Run with its error, and what was already started (proxy
// listener, metrics) is released by the shutdown path.
func TestRunStartFailureReleases(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	mport := testenv.FreePort(t, "127.0.0.1")
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := runAgentConfig(t, fmt.Sprintf(`
server:
  probe: false
  metrics: true
  metricsHost: 127.0.0.1
  metricsPort: %d
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
  adminToken: test-admin-token-0123456789abcdef
targets:
  - name: one
    regex: '.*'
    ipList: ["127.0.0.9:1"]
`, mport, taken.Addr().(*net.TCPAddr).Port), ln)
	err = runReturns(t, a)
	if err == nil || !strings.HasPrefix(err.Error(), "admin: ") {
		t.Fatalf("Run: %v, want the admin start error", err)
	}
	refused(t, "proxy listener", ln.Addr().String())
	refused(t, "metrics", fmt.Sprintf("127.0.0.1:%d", mport))
}
