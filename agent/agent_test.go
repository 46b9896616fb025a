package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	time.Sleep(200 * time.Millisecond) // the first holds the only IP
	go func() {
		code, body, err := get()
		var doc struct{ Error string }
		json.Unmarshal([]byte(body), &doc)
		queued <- fmt.Sprint(code, " ", doc.Error, " ", err)
	}()
	time.Sleep(200 * time.Millisecond) // the second is queued
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
