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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/prober"
)

// The agent runs the prober with its config: probes through the real
// upstreams, quarantines a dead IP in both targets that use it after
// probeFailuresUntilQuarantine failed probes, releases a healthy IP an
// operator quarantined, feeds the metrics, shows each IP's last probe, and
// stops with the agent.
func TestAgentProber(t *testing.T) {
	clearEnv(t)
	var probes atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			probes.Add(1)
		}
		fmt.Fprint(w, "ok")
	}))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{BasicAuth: "prov:pw"})
	dead := net.JoinHostPort("127.0.0.3", fmt.Sprint(testenv.FreePort(t, "127.0.0.3")))
	cfgPath, metricsPort := writeMetricsConfig(t, fmt.Sprintf(`
  shutdownTimeout: 2s
  probeInterval: 200ms
  probeTimeout: 2s
  probeUrls: ["%s/probe"]
  probeFailuresUntilQuarantine: 2
  probeReleasesQuarantine: true
proxyProviders:
  - name: local
    ipList: ["%s", "%s"]
    regionTag: lab
    auth: {type: basic, username: prov, password: pw}
ipPools:
  - name: both
    ipRequests: [{provider: local, count: 2}]
targets:
  - name: one
    regex: 'one\.example'
    ipPool: both
    minRequestInterval: 0
    quarantineTime: 1h
  - name: two
    regex: 'two\.example'
    ipPool: both
    minRequestInterval: 0
    quarantineTime: 2h
`, origin.URL, tp.Addr, dead))
	a, _ := newFileAgent(t, cfgPath)
	if a.Prober() == nil {
		t.Fatal("Prober() is nil with server.probe on")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	wait := func(what string, cond func() bool) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, func() error {
			if !cond() {
				return errors.New("still waiting for " + what)
			}
			return nil
		})
	}
	state := func(i int, addr string) pool.IPState {
		s, err := a.Targets()[i].Pool.State(context.Background(), addr)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	wait("the dead IP quarantined in both targets", func() bool {
		return state(0, dead).State == pool.StateQuarantined && state(1, dead).State == pool.StateQuarantined
	})
	if s0, s1 := state(0, dead), state(1, dead); s1.Until.Sub(s0.Until) < 59*time.Minute {
		t.Errorf("quarantine ends %v and %v, want each target's quarantineTime (1h, 2h)", s0.Until, s1.Until)
	}
	st, ok := a.Prober().Status(dead)
	if !ok || st.OK || st.Reason != prober.ReasonProxyUnreachable || st.Provider != "local" || st.Region != "lab" {
		t.Errorf("status of the dead IP: %+v", st)
	}
	wait("a good probe of the healthy IP", func() bool { s, ok := a.Prober().Status(tp.Addr); return ok && s.OK })
	if probes.Load() == 0 {
		t.Error("the origin saw no probe (through tinyproxy with the provider's credentials)")
	}
	// An operator quarantines the healthy IP; a good probe releases it.
	if err := a.Targets()[0].Pool.Quarantine(context.Background(), tp.Addr, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	wait("the healthy IP released by a probe", func() bool { return state(0, tp.Addr).State != pool.StateQuarantined })

	// A reload adds an IP to target one: the prober probes it too.
	tp2 := testenv.StartTinyproxy(t, "127.0.0.4", testenv.TinyproxyOptions{})
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	grown := strings.Replace(string(raw), "  - name: one\n    regex: 'one\\.example'\n    ipPool: both\n",
		fmt.Sprintf("  - name: one\n    regex: 'one\\.example'\n    ipList: [%q]\n", tp2.Addr), 1)
	if grown == string(raw) {
		t.Fatal("test config not rewritten")
	}
	if err := os.WriteFile(cfgPath, []byte(grown), 0o600); err != nil {
		t.Fatal(err)
	}
	grownCfg, err := loadResolved(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reload(context.Background(), grownCfg); err != nil {
		t.Fatal(err)
	}
	wait("a probe of the IP the reload added", func() bool { s, ok := a.Prober().Status(tp2.Addr); return ok && s.OK })

	resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", fmt.Sprint(metricsPort)) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`proxy_hopper_probe_failure_total{address=%q,provider="local",reason="proxy_unreachable",region="lab"}`, dead),
		fmt.Sprintf(`proxy_hopper_ip_reachable{address=%q,provider="local",region="lab"} 0`, dead),
		fmt.Sprintf(`proxy_hopper_ip_reachable{address=%q,provider="local",region="lab"} 1`, tp.Addr),
		fmt.Sprintf(`proxy_hopper_probe_success_total{address=%q,provider="local",region="lab"}`, tp.Addr),
		fmt.Sprintf(`proxy_hopper_ip_quarantine_events_total{address=%q,provider="local",region="lab",target="two"} 1`, dead),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}

// server.probe false, or no probe URLs: no prober.
func TestAgentProberOff(t *testing.T) {
	clearEnv(t)
	for _, server := range []string{"server:\n  probe: false\n", "server:\n  probeUrls: []\n"} {
		a, err := New(context.Background(), mustResolve(t, server+minimal), Options{Logger: discard()})
		if err != nil {
			t.Fatal(err)
		}
		if a.Prober() != nil {
			t.Errorf("%q: a prober", server)
		}
		a.closePools()
		a.backend.Close()
	}
}
