package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// helperFDLimit is the fd limit of the agent process in
// TestConnLimitsKeepAgentReachable.
const helperFDLimit = 256

// TestConnLimitAgentProcess is the agent of TestConnLimitsKeepAgentReachable,
// run in a child process whose fd limit (soft and hard) is helperFDLimit.
func TestConnLimitAgentProcess(t *testing.T) {
	cfgPath := os.Getenv("PH_CONNLIMIT_AGENT_CONFIG")
	if cfgPath == "" {
		t.Skip("helper process of TestConnLimitsKeepAgentReachable")
	}
	lim := syscall.Rlimit{Cur: helperFDLimit, Max: helperFDLimit}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadResolved(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	a, err := New(ctx, cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestConnLimitsKeepAgentReachable: an agent with 256 fds, flooded with
// silent connections (more than its fds), keeps serving: one address
// cannot take more than its share, so a client elsewhere is served; at
// the global cap the admin API (/healthz) and /metrics still answer, as
// the cap leaves fds in reserve; refusals are counted by reason.
func TestConnLimitsKeepAgentReachable(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") }))
	t.Cleanup(origin.Close)
	up := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	port := testenv.FreePort(t, "127.0.0.1")
	adminPort := testenv.FreePort(t, "127.0.0.1")
	metricsPort := testenv.FreePort(t, "127.0.0.1")
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	cfg := fmt.Sprintf(`
server:
  host: 127.0.0.1
  port: %d
  probe: false
  shutdownTimeout: 2s
  headerTimeout: 1m
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
  adminToken: %s
  metrics: true
  metricsPort: %d
  maxConnectionsPerClient: 40
  fdReserve: 64
targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipList: ["%s"]
    minRequestInterval: 0
`, port, adminPort, testAdminToken, metricsPort, up.Addr)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var outMu sync.Mutex
	cmd := exec.Command(os.Args[0], "-test.run=^TestConnLimitAgentProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "PH_CONNLIMIT_AGENT_CONFIG="+cfgPath)
	w := writerFunc(func(p []byte) (int, error) { outMu.Lock(); defer outMu.Unlock(); return out.Write(p) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			outMu.Lock()
			t.Logf("agent output:\n%s", out.String())
			outMu.Unlock()
		}
	})
	proxyAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	for _, a := range []string{proxyAddr, strings.TrimPrefix(adminURL, "http://"), fmt.Sprintf("127.0.0.1:%d", metricsPort)} {
		testenv.WaitListening(t, a, 20*time.Second)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := client.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	fetchFrom := func(src string) string {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", proxyAddr)
		if err != nil {
			return err.Error()
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n%s: %s\r\n\r\n", proxy.HeaderTarget, origin.URL)
		b, err := io.ReadAll(c)
		if err != nil && len(b) == 0 {
			return err.Error()
		}
		line, _, _ := strings.Cut(string(b), "\r\n")
		return line
	}
	var silent []net.Conn
	t.Cleanup(func() {
		for _, c := range silent {
			c.Close()
		}
	})
	flood := func(src string, n int) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		for range n {
			c, err := d.Dial("tcp", proxyAddr)
			if errors.Is(err, syscall.ECONNRESET) {
				continue
			}
			if err != nil {
				t.Fatalf("dial from %s: %v", src, err)
			}
			silent = append(silent, c)
		}
	}

	// One address floods: 300 silent connections, more than the agent
	// has fds. A client on another address is served meanwhile.
	flood("127.0.0.1", 300)
	if got := fetchFrom("127.0.0.2"); got != "HTTP/1.1 200 OK" {
		t.Fatalf("request from another address during the flood: %q", got)
	}
	// Many addresses flood: the global cap ((256-64)/2 = 96) is reached.
	for i := 10; i < 20; i++ {
		flood(fmt.Sprintf("127.0.0.%d", i), 40)
	}
	if code, body := get(adminURL + "/healthz"); code != 200 {
		t.Fatalf("/healthz at the connection cap: %d %s", code, body)
	}
	code, metrics := get(metricsURL)
	if code != 200 {
		t.Fatalf("/metrics at the connection cap: %d", code)
	}
	for _, reason := range []string{proxy.RefusedClientLimit, proxy.RefusedGlobalLimit} {
		prefix := `proxy_hopper_connections_refused_total{reason="` + reason + `"} `
		i := strings.Index(metrics, prefix)
		if i < 0 {
			t.Fatalf("no %s in /metrics", prefix)
		}
		if v, _, _ := strings.Cut(metrics[i+len(prefix):], "\n"); v == "0" {
			t.Errorf("%s0, want refusals counted", prefix)
		}
	}
	if !strings.Contains(metrics, "proxy_hopper_active_connections 96\n") {
		i := strings.Index(metrics, "proxy_hopper_active_connections ")
		t.Errorf("active connections at the cap: %q, want 96", metrics[i:i+40])
	}
	// The flood ends: the agent serves again.
	for _, c := range silent {
		c.Close()
	}
	silent = nil
	testenv.Eventually(t, 10*time.Second, func() error {
		if got := fetchFrom("127.0.0.2"); got != "HTTP/1.1 200 OK" {
			return fmt.Errorf("request after the flood: %q", got)
		}
		return nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
