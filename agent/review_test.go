package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
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
	waitFor(t, "MetricsAddr", func() bool { return e.a.MetricsAddr() != nil })
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
	waitFor(t, "both IPs probed", func() bool {
		m := scrape()
		return strings.Contains(m, deadSeries+" 0") && strings.Contains(m, goodSeries)
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
