package prober_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/metrics"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/prober"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// idle is a pool policy where a probe's cooldown does not get in the way.
var idle = pool.Config{FailuresUntilQuarantine: 100, QuarantineTime: time.Minute}

// Each kind of broken upstream fails with its own reason, for hand-made
// upstreams and for real tinyproxy ones whose origin misbehaves; a healthy
// tinyproxy passes; the results reach the Prometheus metrics.
func TestReasonsAndMetrics(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	o502 := newOrigin(t)
	o502.status = 502
	tiny := func() string { return testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr }
	stopped := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{})
	stopped.Stop()
	probeURL := o.URL + "/probe"
	cases := []struct {
		name   string
		up     proxy.Upstream
		url    string
		reason string
		code   int
	}{
		{"healthy tinyproxy", proxy.Upstream{Addr: tiny(), Provider: "acme", Region: "eu"}, probeURL, "", 200},
		{"refusing port", up(refusing(t)), probeURL, prober.ReasonProxyUnreachable, 0},
		{"stopped tinyproxy", up(stopped.Addr), probeURL, prober.ReasonProxyUnreachable, 0},
		{"hanging upstream", up(hanging(t)), probeURL, prober.ReasonTimeout, 0},
		{"closing upstream", up(closing(t)), probeURL, prober.ReasonConnectionError, 0},
		{"upstream answering 502", up(badGateway(t)), probeURL, prober.ReasonHTTPError, 502},
		{"upstream answering a 100 KiB head", up(bigHead(t)), probeURL, prober.ReasonConnectionError, 0},
		{"tinyproxy, origin answering 502", up(tiny()), o502.URL + "/probe", prober.ReasonHTTPError, 502},
		{"tinyproxy, origin hanging", up(tiny()), "http://" + hanging(t) + "/probe", prober.ReasonTimeout, 0},
		{"tinyproxy, origin closing", up(tiny()), "http://" + closingAfterHead(t) + "/probe", prober.ReasonConnectionError, 0},
	}
	reg := prometheus.NewPedanticRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	onProbe := func(s prober.Status) {
		m.Probe(metrics.ProbeResult{Addr: s.Addr, IPLabels: metrics.IPLabels{Provider: s.Provider, Region: s.Region},
			OK: s.OK, Reason: s.Reason, Duration: s.Latency})
	}
	// One target holds them all; one prober per probe URL.
	var ups []proxy.Upstream
	byURL := map[string]map[string]proxy.Upstream{}
	for _, c := range cases {
		ups = append(ups, c.up)
		if byURL[c.url] == nil {
			byURL[c.url] = map[string]proxy.Upstream{}
		}
		byURL[c.url][c.up.Addr] = c.up
	}
	pl := e.target("t", idle, ups...)
	probers := map[string]*prober.Prober{}
	for u, set := range byURL {
		e.targets = []prober.Target{{Name: "t", Pool: pl, Upstreams: set}}
		probers[u] = e.prober(prober.Options{URLs: []string{u}, Timeout: 700 * time.Millisecond, OnProbe: onProbe})
	}
	start := time.Now()
	rep := probers[probeURL].Round(e.ctx)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("round took %v: probes did not run concurrently within their timeout", d)
	}
	if len(rep.Probed) != 7 || len(rep.Skipped) != 0 {
		t.Fatalf("round report %+v, want 7 IPs probed", rep)
	}
	for u, p := range probers {
		if u != probeURL {
			p.Round(e.ctx)
		}
	}
	for _, c := range cases {
		s, ok := probers[c.url].Status(c.up.Addr)
		if !ok {
			t.Errorf("%s: no status", c.name)
			continue
		}
		if s.Reason != c.reason || s.OK != (c.reason == "") || s.StatusCode != c.code {
			t.Errorf("%s: ok=%v reason=%q status=%d (%s), want reason %q status %d", c.name, s.OK, s.Reason, s.StatusCode, s.Error, c.reason, c.code)
		}
		if s.Addr != c.up.Addr || s.Provider != c.up.Provider || s.Region != c.up.Region || !s.At.Equal(t0) || s.Probes != 1 ||
			s.Latency <= 0 || s.URL != c.url {
			t.Errorf("%s: status %+v", c.name, s)
		}
		if want := 1; c.reason == "" {
			want = 0
			if s.ConsecutiveFailures != want {
				t.Errorf("%s: %d consecutive failures, want %d", c.name, s.ConsecutiveFailures, want)
			}
		} else if s.ConsecutiveFailures != want {
			t.Errorf("%s: %d consecutive failures, want %d", c.name, s.ConsecutiveFailures, want)
		}
		// The latency clock starts a moment after the timeout's, so it may
		// read a little under 700ms.
		if c.reason == prober.ReasonTimeout && (s.Latency < 650*time.Millisecond || s.Latency > 2*time.Second) {
			t.Errorf("%s: latency %v, want about the 700ms timeout", c.name, s.Latency)
		}
		// Probes give the IPs back.
		if st := e.state(pl, c.up.Addr); st.State != pool.StateAvailable {
			t.Errorf("%s: %s after its probe, want available", c.name, st.State)
		}
	}
	if got := len(probers[probeURL].Statuses()); got != 7 {
		t.Errorf("Statuses lists %d IPs, want 7", got)
	}
	if o.total() != 1 || o502.total() != 1 {
		t.Errorf("origins saw %d and %d probes, want 1 each", o.total(), o502.total())
	}

	var exp strings.Builder
	exp.WriteString("# HELP proxy_hopper_probe_success_total Successful background probes of an IP.\n# TYPE proxy_hopper_probe_success_total counter\n")
	exp.WriteString("# HELP proxy_hopper_probe_failure_total Failed background probes of an IP, by reason.\n# TYPE proxy_hopper_probe_failure_total counter\n")
	exp.WriteString("# HELP proxy_hopper_ip_reachable Whether the IP passed its last background probe (1) or not (0).\n# TYPE proxy_hopper_ip_reachable gauge\n")
	for _, c := range cases {
		l := fmt.Sprintf("address=%q,provider=%q", c.up.Addr, c.up.Provider)
		if c.reason == "" {
			fmt.Fprintf(&exp, "proxy_hopper_probe_success_total{%s,region=%q} 1\n", l, c.up.Region)
			fmt.Fprintf(&exp, "proxy_hopper_ip_reachable{%s,region=%q} 1\n", l, c.up.Region)
			continue
		}
		fmt.Fprintf(&exp, "proxy_hopper_probe_failure_total{%s,reason=%q,region=%q} 1\n", l, c.reason, c.up.Region)
		fmt.Fprintf(&exp, "proxy_hopper_ip_reachable{%s,region=%q} 0\n", l, c.up.Region)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(exp.String()),
		"proxy_hopper_probe_success_total", "proxy_hopper_probe_failure_total", "proxy_hopper_ip_reachable"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "proxy_hopper_probe_duration_seconds"); n != len(cases) {
		t.Errorf("probe_duration_seconds has %d series, want %d", n, len(cases))
	}
}

// The probe goes through the upstream with its credentials, also as a
// CONNECT for an https URL, whose certificate is not checked.
func TestCredentialsAndHTTPS(t *testing.T) {
	e := newEnv(t)
	o := newTLSOrigin(t)
	tp := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{BasicAuth: "user:s3cret"})
	good := proxy.Upstream{Addr: tp.Addr, Username: "user", Password: "s3cret"}
	e.target("t", idle, good)
	p := e.prober(prober.Options{URLs: []string{o.URL + "/secure"}})
	p.Round(e.ctx)
	if s, _ := p.Status(tp.Addr); !s.OK || s.StatusCode != 200 {
		t.Fatalf("probe with credentials over CONNECT: %+v", s)
	}
	if o.total() != 1 {
		t.Fatalf("origin saw %d requests, want 1", o.total())
	}
	// Without them tinyproxy refuses the CONNECT.
	e2 := newEnv(t)
	e2.target("t", idle, up(tp.Addr))
	p2 := e2.prober(prober.Options{URLs: []string{o.URL + "/secure"}})
	p2.Round(e2.ctx)
	if s, _ := p2.Status(tp.Addr); s.OK || s.Reason != prober.ReasonConnectionError {
		t.Fatalf("probe without credentials: %+v, want connection_error", s)
	}
}

// Each IP cycles through the URLs.
func TestURLsRoundRobin(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	e.target("t", pool.Config{MinRequestInterval: time.Second, FailuresUntilQuarantine: 1, QuarantineTime: time.Minute}, up(a))
	p := e.prober(prober.Options{URLs: []string{o.URL + "/a", o.URL + "/b", o.URL + "/c"}})
	for range 4 {
		if rep := p.Round(e.ctx); len(rep.Probed) != 1 {
			t.Fatalf("round %+v, want a probed", rep)
		}
		e.clock.Advance(time.Second)
	}
	if got, want := o.paths(), []string{"/a", "/b", "/c", "/a"}; !slices.Equal(got, want) {
		t.Fatalf("probe URLs %v, want %v", got, want)
	}
}

// No probe while an IP is in use or cooling down in any target; a probe
// does not take the IP: requests get it during the probe, and the probe
// starts no cooldown.
func TestNoProbeWhileBusy(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	b := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	cfg := pool.Config{MinRequestInterval: 10 * time.Second, FailuresUntilQuarantine: 5, QuarantineTime: time.Minute}
	one := e.target("one", cfg, up(a), up(b))
	two := e.target("two", pool.Config{MinRequestInterval: 3 * time.Second, FailuresUntilQuarantine: 5, QuarantineTime: time.Minute}, up(a))
	p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}})

	// a in use in target two only.
	if got, err := two.Acquire(e.ctx); err != nil || got != a {
		t.Fatalf("Acquire = %q, %v", got, err)
	}
	rep := p.Round(e.ctx)
	if rep.Skipped[a] != prober.SkipBusy || !slices.Equal(rep.Probed, []string{b}) {
		t.Fatalf("a in use in two: round %+v, want a skipped as busy, b probed", rep)
	}
	if o.total() != 1 {
		t.Fatalf("origin saw %d probes, want 1 (b)", o.total())
	}
	// Released (a failure): cooling in two (3s), so still not probed.
	if err := two.Release(e.ctx, a, pool.Failure); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(3*time.Second - time.Nanosecond)
	if rep := p.Round(e.ctx); rep.Skipped[a] != prober.SkipBusy {
		t.Fatalf("a cooling in two: round %+v, want a skipped", rep)
	}
	e.clock.Advance(time.Nanosecond)
	// Free everywhere: probed, and still free in both targets while the
	// probe runs (it hangs at the origin until released).
	entered, release := o.holdRequests()
	defer release()
	done := make(chan prober.Report, 1)
	go func() { done <- p.Round(e.ctx) }()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("probe of a never reached the origin")
	}
	for _, pl := range []*pool.Pool{one, two} {
		if s := e.state(pl, a); s.State != pool.StateAvailable {
			t.Errorf("a during its probe in %s: %s, want available", pl.Target(), s.State)
		}
	}
	// A request takes it meanwhile, and gives it back.
	if got, err := two.Acquire(e.ctx); err != nil || got != a {
		t.Fatalf("Acquire in two during the probe = %q, %v; want a", got, err)
	}
	if err := two.Release(e.ctx, a, pool.Neutral); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(3 * time.Second)
	release()
	if rep := <-done; !slices.Contains(rep.Probed, a) {
		t.Fatalf("round %+v, want a probed", rep)
	}
	// The probe started no cooldown.
	if s := e.state(one, a); s.State != pool.StateAvailable {
		t.Errorf("a in one after the probe: %+v, want available", s)
	}
	if s, _ := p.Status(a); !s.OK || s.Probes != 1 {
		t.Errorf("a: %+v", s)
	}
	if got, err := two.Acquire(e.ctx); err != nil || got != a {
		t.Errorf("Acquire in two after the probe = %q, %v; want a", got, err)
	}
	// The failure counts of the pools are not touched by probes.
	if s := e.state(two, a); s.Failures != 1 {
		t.Errorf("a has %d failures in two, want the 1 it had before the probe", s.Failures)
	}
}

// N consecutive failed probes quarantine the IP in every target that uses
// it, each for its own quarantine time; a success in between starts the
// count again; 0 never quarantines.
func TestQuarantineAfterFailedProbes(t *testing.T) {
	o := newOrigin(t)
	healthy := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	dead := refusing(t)

	t.Run("threshold 3", func(t *testing.T) {
		e := newEnv(t)
		one := e.target("one", pool.Config{FailuresUntilQuarantine: 5, QuarantineTime: time.Minute}, up(dead), up(healthy))
		two := e.target("two", pool.Config{FailuresUntilQuarantine: 5, QuarantineTime: 5 * time.Minute}, up(dead))
		p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}, FailuresUntilQuarantine: 3})
		for i := 1; i <= 2; i++ {
			p.Round(e.ctx)
			if s, _ := p.Status(dead); s.ConsecutiveFailures != i {
				t.Fatalf("after %d failed probes: %+v", i, s)
			}
			for _, pl := range []*pool.Pool{one, two} {
				if s := e.state(pl, dead); s.State != pool.StateAvailable {
					t.Fatalf("dead after %d failed probes in %s: %s", i, pl.Target(), s.State)
				}
			}
		}
		if ev := e.takeEvents(); len(ev) != 0 {
			t.Fatalf("hooks before the threshold: %q", ev)
		}
		p.Round(e.ctx)
		if s, _ := p.Status(dead); s.ConsecutiveFailures != 3 || s.Reason != prober.ReasonProxyUnreachable {
			t.Fatalf("third failed probe: %+v", s)
		}
		if s := e.state(one, dead); s.State != pool.StateQuarantined || !s.Until.Equal(t0.Add(time.Minute)) {
			t.Errorf("dead in one: %+v, want quarantined 1m", s)
		}
		if s := e.state(two, dead); s.State != pool.StateQuarantined || !s.Until.Equal(t0.Add(5*time.Minute)) {
			t.Errorf("dead in two: %+v, want quarantined 5m", s)
		}
		ev := e.takeEvents()
		slices.Sort(ev)
		if want := []string{"one quarantined " + dead + " for 1m0s (probe_proxy_unreachable)", "two quarantined " + dead + " for 5m0s (probe_proxy_unreachable)"}; !slices.Equal(ev, want) {
			t.Errorf("hooks %q, want %q", ev, want)
		}
		if s := e.state(one, healthy); s.State != pool.StateAvailable {
			t.Errorf("healthy in one: %s", s.State)
		}
		// Still quarantined: probed, not quarantined again; released by
		// each pool's timer at its own time.
		p.Round(e.ctx)
		if ev := e.takeEvents(); len(ev) != 0 {
			t.Errorf("hooks while quarantined: %q", ev)
		}
		if s, _ := p.Status(dead); s.Probes != 4 || s.ConsecutiveFailures != 1 {
			t.Errorf("probe while quarantined: %+v, want counted from 1 again", s)
		}
		e.clock.Advance(time.Minute)
		if s := e.state(one, dead); s.State != pool.StateAvailable {
			t.Errorf("dead in one after 1m: %s", s.State)
		}
		if s := e.state(two, dead); s.State != pool.StateQuarantined {
			t.Errorf("dead in two after 1m: %s", s.State)
		}
	})
	t.Run("a success starts the count again", func(t *testing.T) {
		e := newEnv(t)
		sw, set := switchable(t)
		pl := e.target("one", idle, up(sw))
		p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}, FailuresUntilQuarantine: 3})
		for i, status := range []int{502, 502, 200, 502, 502} {
			set(status)
			p.Round(e.ctx)
			if s := e.state(pl, sw); s.State != pool.StateAvailable {
				t.Fatalf("probe %d: %s, want available", i, s.State)
			}
		}
		if s, _ := p.Status(sw); s.ConsecutiveFailures != 2 {
			t.Fatalf("%+v, want 2 failures since the success", s)
		}
		p.Round(e.ctx)
		if s := e.state(pl, sw); s.State != pool.StateQuarantined {
			t.Fatalf("after 3 failures in a row: %s, want quarantined", s.State)
		}
	})
	t.Run("off", func(t *testing.T) {
		e := newEnv(t)
		one := e.target("one", idle, up(dead))
		p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}})
		for range 5 {
			p.Round(e.ctx)
		}
		if s, _ := p.Status(dead); s.ConsecutiveFailures != 5 {
			t.Errorf("%+v", s)
		}
		if s := e.state(one, dead); s.State != pool.StateAvailable {
			t.Errorf("dead with probeFailuresUntilQuarantine 0: %s", s.State)
		}
	})
}

// A successful probe of a quarantined IP releases it in every target where
// it is quarantined when ReleasesQuarantine is on, and not otherwise; a
// failed one never does.
func TestReleasesQuarantine(t *testing.T) {
	o := newOrigin(t)
	healthy := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	dead := refusing(t)
	setup := func(t *testing.T, release bool) (*env, *prober.Prober, []*pool.Pool) {
		e := newEnv(t)
		cfg := pool.Config{MinRequestInterval: 2 * time.Second, FailuresUntilQuarantine: 5, QuarantineTime: time.Hour}
		pools := []*pool.Pool{
			e.target("one", cfg, up(healthy), up(dead)),
			e.target("two", cfg, up(healthy), up(dead)),
			e.target("three", cfg, up(healthy)),
		}
		for _, pl := range pools[:2] {
			for _, a := range []string{healthy, dead} {
				if err := pl.Quarantine(e.ctx, a, t0.Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
			}
		}
		e.takeEvents()
		return e, e.prober(prober.Options{URLs: []string{o.URL + "/p"}, ReleasesQuarantine: release}), pools
	}
	t.Run("on", func(t *testing.T) {
		e, p, pools := setup(t, true)
		rep := p.Round(e.ctx)
		if !slices.Equal(rep.Probed, sorted(healthy, dead)) {
			t.Fatalf("round %+v, want both probed (quarantined or free)", rep)
		}
		// healthy: released in one and two; left as it was (free) in three.
		for _, pl := range pools[:2] {
			if s := e.state(pl, healthy); s.State != pool.StateAvailable {
				t.Errorf("healthy in %s after a good probe: %s, want available", pl.Target(), s.State)
			}
			if s := e.state(pl, dead); s.State != pool.StateQuarantined {
				t.Errorf("dead in %s after a failed probe: %s, want quarantined", pl.Target(), s.State)
			}
		}
		if s := e.state(pools[2], healthy); s.State != pool.StateAvailable {
			t.Errorf("healthy in three after its probe: %s, want available", s.State)
		}
		ev := e.takeEvents()
		slices.Sort(ev)
		if want := []string{"one released " + healthy, "two released " + healthy}; !slices.Equal(ev, want) {
			t.Errorf("hooks %q, want %q", ev, want)
		}
	})
	t.Run("off", func(t *testing.T) {
		e, p, pools := setup(t, false)
		p.Round(e.ctx)
		if s, _ := p.Status(healthy); !s.OK {
			t.Fatalf("healthy: %+v", s)
		}
		for _, pl := range pools[:2] {
			if s := e.state(pl, healthy); s.State != pool.StateQuarantined {
				t.Errorf("healthy in %s: %s, want still quarantined", pl.Target(), s.State)
			}
		}
		if ev := e.takeEvents(); len(ev) != 0 {
			t.Errorf("hooks %q", ev)
		}
	})
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// probeMaxPerHour caps the probes of each IP in any hour.
func TestMaxPerHour(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	e.target("t", idle, up(a))
	p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}, MaxPerHour: 2})
	for i, want := range []string{"", "", prober.SkipMaxPerHour} {
		rep := p.Round(e.ctx)
		if rep.Skipped[a] != want {
			t.Fatalf("round %d: %+v, want skip %q", i, rep, want)
		}
		e.clock.Advance(20 * time.Minute)
	}
	// t0+60m: the first probe is an hour old.
	if rep := p.Round(e.ctx); rep.Skipped[a] != "" {
		t.Fatalf("an hour after the first probe: %+v", rep)
	}
	if rep := p.Round(e.ctx); rep.Skipped[a] != prober.SkipMaxPerHour {
		t.Fatalf("two in the last hour again: %+v", rep)
	}
	if o.total() != 3 {
		t.Fatalf("origin saw %d probes, want 3", o.total())
	}
}

// Probe starts are spread by jitter over the clock.
func TestJitter(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	e.target("t", idle, up(a))
	p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}, Jitter: 10 * time.Second, Rand: func() float64 { return 0.5 }})
	done := make(chan prober.Report, 1)
	go func() { done <- p.Round(e.ctx) }()
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.clock.Pending() == 0 {
			return errors.New("no jitter timer pending")
		}
		return nil
	})
	e.clock.Advance(5*time.Second - time.Nanosecond)
	select {
	case rep := <-done:
		t.Fatalf("round done before its jitter: %+v", rep)
	case <-time.After(50 * time.Millisecond):
	}
	if o.total() != 0 {
		t.Fatal("probe before its jitter")
	}
	e.clock.Advance(time.Nanosecond)
	if rep := <-done; !slices.Equal(rep.Probed, []string{a}) {
		t.Fatalf("round %+v", rep)
	}
}

// goroutinesAtMost is a condition for testenv.Eventually: the prober's
// goroutines ended.
func goroutinesAtMost(n int) error {
	if got := runtime.NumGoroutine(); got > n {
		return fmt.Errorf("%d goroutines, want at most %d", got, n)
	}
	return nil
}

// Run probes a round at once and then every interval, and stops at once
// when its context ends, even with a probe hanging (which never held the
// IP back from the pool); no goroutine is left behind.
func TestRunStops(t *testing.T) {
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	hang := hanging(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pl := newRealPool(ctx, t, a, hang)
	before := runtime.NumGoroutine()
	p, err := prober.New([]prober.Target{{Name: "t", Pool: pl, Upstreams: map[string]proxy.Upstream{a: up(a), hang: up(hang)}}},
		prober.Options{URLs: []string{o.URL + "/p"}, Interval: 100 * time.Millisecond, Timeout: time.Minute, Jitter: 20 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	// The first round probes a, and hangs on the other IP.
	testenv.Eventually(t, 5*time.Second, func() error {
		if o.total() == 0 {
			return errors.New("no probe at the origin")
		}
		return nil
	})
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(p.Statuses()) == 0 {
			return errors.New("no verdict on a")
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond) // the other probe is hanging now
	if s, _ := pl.State(ctx, hang); s.State != pool.StateAvailable {
		t.Errorf("IP under a hanging probe: %+v, want available to requests", s)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return promptly after its context ended")
	}
	if _, ok := p.Status(hang); ok {
		t.Errorf("a probe cut by shutdown left a verdict")
	}
	if o.total() != 1 {
		t.Errorf("origin saw %d probes, want 1: the round with the hang never ended", o.total())
	}
	testenv.Eventually(t, 5*time.Second, func() error { return goroutinesAtMost(before) })

	// Without a hang: a round every interval.
	pl2 := newRealPool(ctx, t, a)
	p2, err := prober.New([]prober.Target{{Name: "t2", Pool: pl2, Upstreams: map[string]proxy.Upstream{a: up(a)}}},
		prober.Options{URLs: []string{o.URL + "/q"}, Interval: 100 * time.Millisecond, Timeout: 5 * time.Second, Jitter: -1,
			Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	before = runtime.NumGoroutine()
	runCtx, stop = context.WithCancel(ctx)
	start := time.Now()
	go func() { done <- p2.Run(runCtx) }()
	testenv.Eventually(t, 5*time.Second, func() error {
		if s, _ := p2.Status(a); s.Probes < 4 {
			return fmt.Errorf("%d probes of a, want 4 rounds", s.Probes)
		}
		return nil
	})
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("four rounds in %v, want an interval (100ms) between them", d)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error { return goroutinesAtMost(before) })
}

// newRealPool is a pool on the wall clock, with no cooldown.
func newRealPool(ctx context.Context, t *testing.T, addrs ...string) *pool.Pool {
	be := memory.New(nil)
	p, err := pool.New(ctx, "t", addrs, be, pool.Config{FailuresUntilQuarantine: 5, QuarantineTime: time.Minute},
		pool.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); be.Close() })
	return p
}

// SetTargets changes what the next rounds probe; statuses of IPs no
// target uses any more go.
func TestSetTargets(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	b := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	e.target("one", idle, up(a))
	p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}})
	e.target("two", idle, up(b))
	if rep := p.Round(e.ctx); !slices.Equal(rep.Probed, []string{a}) {
		t.Fatalf("round %+v, want a", rep)
	}
	p.SetTargets(e.targets[1:])
	if rep := p.Round(e.ctx); !slices.Equal(rep.Probed, []string{b}) {
		t.Fatalf("round after SetTargets %+v, want b", rep)
	}
	if _, ok := p.Status(a); ok {
		t.Error("a still has a status after its target went")
	}
	if s, ok := p.Status(b); !ok || !s.OK {
		t.Errorf("b: %+v, %v", s, ok)
	}
}

// An IP dropped by SetTargets while its probe runs: OnForget tells, and
// the probe's result is dropped (no status, no OnProbe, no verdict), so
// nothing reports on an IP no target uses.
func TestSetTargetsDuringProbe(t *testing.T) {
	e := newEnv(t)
	o := newOrigin(t)
	a := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	e.target("one", idle, up(a))
	var mu sync.Mutex
	var events []string
	p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}, Timeout: 5 * time.Second,
		OnProbe:  func(s prober.Status) { mu.Lock(); events = append(events, "probe "+s.Addr); mu.Unlock() },
		OnForget: func(addr string) { mu.Lock(); events = append(events, "forget "+addr); mu.Unlock() },
	})
	entered, release := o.holdRequests()
	done := make(chan prober.Report, 1)
	go func() { done <- p.Round(e.ctx) }()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the probe did not reach the origin")
	}
	p.SetTargets(nil)
	release()
	rep := <-done
	if len(rep.Probed) != 0 || rep.Skipped[a] != prober.SkipGone {
		t.Errorf("round %+v, want %s skipped as gone", rep, a)
	}
	if _, ok := p.Status(a); ok {
		t.Errorf("%s has a status after SetTargets dropped it", a)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"forget " + a}; !slices.Equal(events, want) {
		t.Errorf("events %q, want %q", events, want)
	}
}

// withoutFreeFDs runs f with the process's descriptor limit lowered so
// that no new descriptor can be opened: every socket(2) fails with EMFILE,
// for real. Not for parallel tests.
func withoutFreeFDs(t *testing.T, f func()) {
	t.Helper()
	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	low := saved
	low.Cur = uint64(fd) // the lowest free descriptor: none below the limit is free
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
			t.Fatal(err)
		}
	}()
	f()
}

// TestLocalErrorNoVerdict: a probe that fails because the agent cannot
// open a socket (EMFILE) is no verdict on the IP: not counted, no
// quarantine even with a threshold of one, reported as skipped; once
// descriptors are free the IP is probed and passes.
func TestLocalErrorNoVerdict(t *testing.T) {
	o := newOrigin(t)
	healthy := testenv.StartTinyproxy(t, "127.0.0.1", testenv.TinyproxyOptions{}).Addr
	e := newEnv(t)
	pl := e.target("one", pool.Config{FailuresUntilQuarantine: 5, QuarantineTime: time.Minute}, up(healthy))
	var probes []prober.Status
	p := e.prober(prober.Options{URLs: []string{o.URL + "/p"}, FailuresUntilQuarantine: 1,
		OnProbe: func(s prober.Status) { probes = append(probes, s) }})
	var rep prober.Report
	withoutFreeFDs(t, func() { rep = p.Round(e.ctx) })
	if got := rep.Skipped[healthy]; got != prober.SkipLocal {
		t.Errorf("round without descriptors: skipped %q, want %q (probed %v)", got, prober.SkipLocal, rep.Probed)
	}
	if s := e.state(pl, healthy); s.State != pool.StateAvailable {
		t.Fatalf("IP after a probe that failed locally: %s, want available", s.State)
	}
	if ev := e.takeEvents(); len(ev) != 0 || len(probes) != 0 {
		t.Fatalf("hooks %q, probes %+v after a local failure; want none", ev, probes)
	}
	rep = p.Round(e.ctx)
	if len(probes) != 1 || !probes[0].OK || probes[0].ConsecutiveFailures != 0 {
		t.Fatalf("probe with descriptors free: %+v (report %+v)", probes, rep)
	}
}
