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
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// An IP removed through the admin API (the same path as a reload) leaves
// proxy_hopper_ip_reachable: a gauge left at its last value would say,
// forever, that an IP no target uses is unreachable (an alert on it would
// keep firing after the operator removed the dead IP).
func TestRemovedIPLeavesReachableGauge(t *testing.T) {
	good := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	dead := net.JoinHostPort("127.0.0.3", fmt.Sprint(testenv.FreePort(t, "127.0.0.3"))) // refuses
	probeOrigin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "probe ok")
	}))
	defer probeOrigin.Close()
	metricsPort := testenv.FreePort(t, "127.0.0.1")
	e := startAdminAgent(t, fmt.Sprintf("  metrics: true\n  metricsPort: %d\n  probe: true\n  probeUrls: [%q]\n  probeInterval: 100ms\n  probeTimeout: 2s",
		metricsPort, probeOrigin.URL), oneTarget(good.Addr, dead))
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.a.MetricsAddr() == nil {
			return errors.New("still waiting for MetricsAddr")
		}
		return nil
	})
	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + e.a.MetricsAddr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	deadSeries := fmt.Sprintf(`proxy_hopper_ip_reachable{address=%q,provider="",region=""}`, dead)
	goodSeries := fmt.Sprintf(`proxy_hopper_ip_reachable{address=%q,provider="",region=""} 1`, good.Addr)
	testenv.Eventually(t, 5*time.Second, func() error {
		m := scrape()
		if !(strings.Contains(m, deadSeries+" 0") && strings.Contains(m, goodSeries)) {
			return errors.New("still waiting for both IPs probed")
		}
		return nil
	})
	e.api("DELETE", "/api/targets/web/ips/"+dead, "", 200)
	// A probe of the dead IP may have been in flight: give it time to end
	// (a refused connect ends at once) and a few more rounds.
	time.Sleep(500 * time.Millisecond)
	m := scrape()
	if strings.Contains(m, deadSeries) {
		t.Errorf("/metrics still has %s after the IP was removed:\n%s", deadSeries, grepLines(m, "proxy_hopper_ip_reachable"))
	}
	if !strings.Contains(m, goodSeries) {
		t.Errorf("/metrics lost %s", goodSeries)
	}
	if _, ok := e.a.Prober().Status(dead); ok {
		t.Errorf("the prober still has a status for the removed IP %s", dead)
	}
}

// An admin IP edit that comes while the agent shuts down (the admin API
// serves until the end, for /readyz), once the backend is closed, is
// answered 503 shutting_down, as quarantine and release are, not 500.
func TestAdminEditWhileShuttingDown(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	var arrived atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		time.Sleep(2 * time.Second)
		fmt.Fprint(w, "slow")
	}))
	defer origin.Close()
	port := testenv.FreePort(t, "127.0.0.1")
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server:
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
  adminToken: %s
  shutdownTimeout: 5s
  probe: false
%s`, port, testAdminToken, oneTarget(tp.Addr))), 0o600); err != nil {
		t.Fatal(err)
	}
	a, ln := newFileAgent(t, cfgPath)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	adminAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	testenv.WaitListening(t, adminAddr, 5*time.Second)
	e := &adminEnv{t: t, a: a, base: "http://" + adminAddr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	slow := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
		req.Header.Set(proxy.HeaderTarget, origin.URL)
		resp, err := e.client.Do(req)
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		// At the origin, not just accepted: a connection whose request
		// is still being read is closed at once on shutdown.
		if arrived.Load() == 0 {
			return errors.New("still waiting for the slow request in flight")
		}
		return nil
	})
	cancel()
	testenv.Eventually(t, 5*time.Second, func() error {
		code, _ := e.call("GET", "/readyz", "", "")
		if code != 503 {
			return errors.New("still waiting for /readyz 503 while shutting down")
		}
		return nil
	})
	// The backend closes right after (no transparent mode, gateway or
	// prober to stop first); the slow request keeps the agent shutting
	// down for 2 s.
	time.Sleep(300 * time.Millisecond)
	if code, body := e.call("POST", "/api/targets/web/ips", testAdminToken, `{"address": "127.0.0.9:3128"}`); code != 503 ||
		!strings.Contains(body, "shutting_down") {
		t.Errorf("add IP while shutting down: %d %s, want 503 shutting_down", code, body)
	}
	if code, body := e.call("DELETE", "/api/targets/web/ips/"+tp.Addr, testAdminToken, ""); code != 503 ||
		!strings.Contains(body, "shutting_down") {
		t.Errorf("remove IP while shutting down: %d %s, want 503 shutting_down", code, body)
	}
	if got := <-slow; got != 200 {
		t.Errorf("request in flight at shutdown: %d", got)
	}
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
}
