package metrics

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newTarget builds target "api" with four IPs over a memory backend on a
// fake clock: two from provider "acme" (region eu, us), two without one.
func newTarget(t *testing.T, m *Metrics, backend pool.Backend, clock pool.Clock) *proxy.Target {
	t.Helper()
	ups := map[string]proxy.Upstream{
		"10.0.0.1:3128": {Addr: "10.0.0.1:3128", Provider: "acme", Region: "eu"},
		"10.0.0.2:3128": {Addr: "10.0.0.2:3128", Provider: "acme", Region: "us"},
		"10.0.0.3:3128": {Addr: "10.0.0.3:3128"},
		"10.0.0.4:3128": {Addr: "10.0.0.4:3128"},
	}
	var hooks pool.Hooks
	if m != nil {
		hooks = m.PoolHooks("api", LabelsOf(ups))
	}
	p, err := pool.New(context.Background(), "api",
		[]string{"10.0.0.1:3128", "10.0.0.2:3128", "10.0.0.3:3128", "10.0.0.4:3128"}, backend,
		pool.Config{MinRequestInterval: time.Minute, MaxQueueWait: 0, FailuresUntilQuarantine: 2, QuarantineTime: time.Hour},
		pool.Options{Clock: clock, Hooks: hooks, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &proxy.Target{Name: "api", Pool: p, Upstreams: ups}
}

func TestGolden(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	clock := pool.NewFakeClock(t0)
	backend := memory.New(clock)
	defer backend.Close()
	tg := newTarget(t, m, backend, clock)
	ctx := context.Background()
	step := func(want string, o pool.Outcome) {
		t.Helper()
		ip, err := tg.Pool.Acquire(ctx)
		if err != nil || ip != want {
			t.Fatalf("Acquire = %q, %v; want %s", ip, err, want)
		}
		if err := tg.Pool.Release(ctx, ip, o); err != nil {
			t.Fatal(err)
		}
	}
	// .1 fails twice (quarantined), .2 fails once and cools down, .3 is
	// held in use, .4 stays available.
	step("10.0.0.1:3128", pool.Failure)
	clock.Advance(time.Minute)
	step("10.0.0.2:3128", pool.Failure)
	step("10.0.0.3:3128", pool.Success)
	step("10.0.0.4:3128", pool.Success)
	step("10.0.0.1:3128", pool.Failure)
	clock.Advance(time.Minute)
	// Now .2, .3, .4 are ready, in that order.
	if ip, err := tg.Pool.Acquire(ctx); err != nil || ip != "10.0.0.2:3128" {
		t.Fatalf("Acquire = %q, %v", ip, err)
	}
	if err := tg.Pool.Release(ctx, "10.0.0.2:3128", pool.Neutral); err != nil { // cooling, failures still 1
		t.Fatal(err)
	}
	if ip, err := tg.Pool.Acquire(ctx); err != nil || ip != "10.0.0.3:3128" { // in use
		t.Fatalf("Acquire = %q, %v", ip, err)
	}

	for _, ev := range []proxy.RequestEvent{
		{Target: "api", Mode: "header", Tag: "search", Outcome: proxy.OutcomeSuccess, Status: 200, Retries: 1,
			Duration: 300 * time.Millisecond, QueueWait: 20 * time.Millisecond, BytesUp: 100, BytesDown: 5000},
		{Target: "api", Mode: "proxy", Outcome: proxy.OutcomeRateLimited, Status: 429, Retries: 2,
			Duration: 3 * time.Second, QueueWait: 2 * time.Second},
		{Target: "api", Mode: "proxy", Outcome: proxy.OutcomeServerError, Status: 500,
			Duration: 70 * time.Millisecond, QueueWait: time.Millisecond},
		{Target: "api", Mode: "proxy", Outcome: proxy.OutcomeNoIP, Status: 503, QueueWait: 5 * time.Second},
		{Target: "api", Mode: "connect", Outcome: proxy.OutcomeSuccess, Status: 200, Duration: time.Minute, BytesUp: 700, BytesDown: 9000},
		{Target: "api", Mode: "transparent-tls", Outcome: proxy.OutcomeConnectionError, Retries: 2, Duration: time.Second},
		{Target: "api", Mode: "proxy", Outcome: proxy.OutcomeForbidden, Status: 403},
		{Mode: "proxy", Outcome: proxy.OutcomeNoMatch, Status: 502, Tag: "search"},
		{Mode: "proxy", Outcome: proxy.OutcomeAuthFailed, Status: 407},
	} {
		m.Request(ev)
	}
	for _, ev := range []proxy.AttemptEvent{
		{Target: "api", Addr: "10.0.0.1:3128", Mode: "header", Tag: "search", OK: true, Status: 200, Duration: 250 * time.Millisecond},
		{Target: "api", Addr: "10.0.0.1:3128", Mode: "proxy", Reason: "status_429", Status: 429, Duration: time.Second},
		{Target: "api", Addr: "10.0.0.2:3128", Mode: "proxy", Reason: "upstream_refused", Duration: 30 * time.Millisecond},
		// A tunnel's attempt counts in requests_total; its lifetime is no latency.
		{Target: "api", Addr: "10.0.0.3:3128", Mode: "connect", Tag: "search", OK: true, Status: 200, Duration: time.Minute},
	} {
		m.Attempt(ev)
	}
	for _, ev := range []proxy.AcquireEvent{
		{Target: "api", Mode: "header", Wait: 20 * time.Millisecond},
		{Target: "api", Mode: "proxy", Retry: true, Wait: 2 * time.Second},
		{Target: "api", Mode: "connect", Wait: time.Millisecond},
		// maxQueueWait passed: expired; a full queue or a closed pool is not.
		{Target: "api", Mode: "proxy", Wait: 5 * time.Second, Err: pool.ErrNoIP},
		{Target: "api", Mode: "proxy", Retry: true, Wait: 5 * time.Second, Err: pool.ErrNoIP},
		{Target: "api", Mode: "proxy", Err: pool.ErrQueueFull},
		{Target: "api", Mode: "proxy", Err: pool.ErrClosed},
	} {
		m.Acquire(ev)
	}
	m.ConnRefused(proxy.RefusedClientLimit)
	m.ConnRefused(proxy.RefusedClientLimit)
	m.ConfigReload(true)
	m.ConfigReload(true)
	m.ConfigReload(false)
	rotated := m.IdentityRotated("api")
	rotated("10.0.0.1:3128", "quarantine")
	rotated("10.0.0.2:3128", "429")
	rotated("10.0.0.2:3128", "429")
	m.Probe(ProbeResult{Addr: "10.0.0.1:3128", IPLabels: IPLabels{"acme", "eu"}, OK: true, Duration: 400 * time.Millisecond})
	m.Probe(ProbeResult{Addr: "10.0.0.3:3128", OK: false, Reason: "timeout", Duration: 10 * time.Second})

	if err := reg.Register(NewPoolCollector(func() []*proxy.Target { return []*proxy.Target{tg} }, 0)); err != nil {
		t.Fatal(err)
	}
	compareGolden(t, reg, filepath.Join("testdata", "metrics.golden"))
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func compareGolden(t *testing.T, g prometheus.Gatherer, path string) {
	t.Helper()
	if *update {
		mfs, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := testutil.GatherAndCompare(g, f); err != nil {
		t.Error(err)
	}
}

// TestScrapeTime checks that pool gauges follow the pool between scrapes,
// with no refresh in between.
func TestScrapeTime(t *testing.T) {
	reg := prometheus.NewRegistry()
	clock := pool.NewFakeClock(t0)
	backend := memory.New(clock)
	defer backend.Close()
	tg := newTarget(t, nil, backend, clock)
	reg.MustRegister(NewPoolCollector(func() []*proxy.Target { return []*proxy.Target{tg} }, 0))
	want := func(n int) {
		t.Helper()
		exp := "# HELP proxy_hopper_available_ips IPs ready to be handed out now.\n# TYPE proxy_hopper_available_ips gauge\n" +
			"proxy_hopper_available_ips{target=\"api\"} " + string(rune('0'+n)) + "\n"
		if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), "proxy_hopper_available_ips"); err != nil {
			t.Error(err)
		}
	}
	want(4)
	ip, err := tg.Pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want(3)
	if err := tg.Pool.Release(context.Background(), ip, pool.Success); err != nil {
		t.Fatal(err)
	}
	want(3) // cooling
	clock.Advance(time.Minute)
	want(4)
	// queue_depth is the pool's own count of waiting requests, whatever
	// the backend can tell.
	if n, err := testutil.GatherAndCount(reg, "proxy_hopper_queue_depth"); err != nil || n != 1 {
		t.Errorf("queue_depth: %d series, %v; want 1", n, err)
	}
}

// brokenBackend fails every snapshot.
type brokenBackend struct{ *memory.Backend }

var errBroken = errors.New("backend down")

func (brokenBackend) Snapshot(context.Context, string) ([]pool.IPState, error) { return nil, errBroken }

// TestHandler serves a registry from NewRegistry: runtime metrics, ours,
// and a pool that cannot be read is left out without failing the scrape.
func TestHandler(t *testing.T) {
	reg := NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg); err == nil {
		t.Error("registering twice succeeded")
	}
	clock := pool.NewFakeClock(t0)
	good := memory.New(clock)
	defer good.Close()
	tg := newTarget(t, m, good, clock)
	bad := brokenBackend{memory.New(clock)}
	defer bad.Close()
	p, err := pool.New(context.Background(), "down", []string{"10.9.9.9:1"}, bad, tg.Pool.Config(), pool.Options{Clock: clock, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	down := &proxy.Target{Name: "down", Pool: p}
	reg.MustRegister(NewPoolCollector(func() []*proxy.Target { return []*proxy.Target{down, tg} }, 0))
	m.Request(proxy.RequestEvent{Target: "api", Mode: "header", Outcome: proxy.OutcomeSuccess, Status: 200})

	srv := httptest.NewServer(Handler(reg, discard()))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		"go_goroutines ",
		`proxy_hopper_client_requests_total{outcome="success",tag="",target="api"} 1`,
		`proxy_hopper_available_ips{target="api"} 4`,
		"promhttp_metric_handler_errors_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), `target="down"`) {
		t.Errorf("/metrics shows the unreadable pool")
	}
	if resp, err := http.Get(srv.URL + "/other"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET /other: %d, want 404", resp.StatusCode)
		}
	}
}

func TestAttemptOutcome(t *testing.T) {
	for _, c := range []struct {
		ev   proxy.AttemptEvent
		want string
	}{
		{proxy.AttemptEvent{OK: true, Status: 200}, proxy.OutcomeSuccess},
		{proxy.AttemptEvent{OK: true, Status: 404}, proxy.OutcomeSuccess},
		{proxy.AttemptEvent{Reason: "status_429", Status: 429}, proxy.OutcomeRateLimited},
		{proxy.AttemptEvent{Reason: "status_503", Status: 503}, proxy.OutcomeServerError},
		{proxy.AttemptEvent{OK: true, Status: 500}, proxy.OutcomeServerError},
		{proxy.AttemptEvent{Reason: "upstream_refused"}, proxy.OutcomeConnectionError},
		{proxy.AttemptEvent{Reason: "proxy_status_407", Status: 407}, proxy.OutcomeConnectionError},
		{proxy.AttemptEvent{Reason: "upstream_body_reset", Status: 200}, proxy.OutcomeConnectionError},
		{proxy.AttemptEvent{OK: true, Reason: "client_body"}, proxy.OutcomeBadRequest},
	} {
		if got := AttemptOutcome(c.ev); got != c.want {
			t.Errorf("AttemptOutcome(%+v) = %s, want %s", c.ev, got, c.want)
		}
	}
}

// TestClientBytesNeverPanic: a client's bytes never panic a hook.
func TestClientBytesNeverPanic(t *testing.T) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.Request(proxy.RequestEvent{Target: "api", Outcome: proxy.OutcomeSuccess, Status: 200, Tag: "\xff\xfe"})
	m.Request(proxy.RequestEvent{Target: "api", Outcome: proxy.OutcomeSuccess, Status: 200, Tag: strings.Repeat("\xff", 1<<16)})
	if got := testutil.ToFloat64(m.clientReqs.WithLabelValues("api", "success", "\uFFFD")); got != 2 {
		t.Errorf("requests with an invalid tag = %v, want 2", got)
	}
}

// TestConcurrentHooks runs the hooks from many goroutines (meant for -race).
func TestConcurrentHooks(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	hooks := m.PoolHooks("api", map[string]IPLabels{"10.0.0.1:3128": {"acme", "eu"}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				m.Request(proxy.RequestEvent{Target: "api", Mode: "header", Outcome: proxy.OutcomeSuccess, Status: 200, Retries: 1})
				m.Attempt(proxy.AttemptEvent{Target: "api", Addr: "10.0.0.1:3128", OK: true, Status: 200})
				hooks.Quarantined("10.0.0.1:3128", t0)
				hooks.Quarantined("10.0.0.7:3128", t0)
			}
		})
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.clientReqs.WithLabelValues("api", "success", "")); got != 1600 {
		t.Errorf("client requests = %v, want 1600", got)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("api", "success", "")); got != 1600 {
		t.Errorf("requests (attempts) = %v, want 1600", got)
	}
	if got := testutil.ToFloat64(m.quarantines.WithLabelValues("api", "10.0.0.7:3128", "", "")); got != 1600 {
		t.Errorf("quarantines of an IP added later = %v, want 1600", got)
	}
}

func BenchmarkRequestHook(b *testing.B) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ev := proxy.RequestEvent{Target: "api", Mode: "header", Tag: "search", Outcome: proxy.OutcomeSuccess, Status: 200,
		Retries: 1, Duration: 300 * time.Millisecond, QueueWait: 20 * time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		m.Request(ev)
	}
}

func TestAuthFailuresCountedByReason(t *testing.T) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.Request(proxy.RequestEvent{Outcome: proxy.OutcomeAuthFailed, AuthReason: "missing", Status: 401})
	m.Request(proxy.RequestEvent{Outcome: proxy.OutcomeAuthFailed, AuthReason: "missing", Status: 401})
	m.Request(proxy.RequestEvent{Target: "api", Outcome: proxy.OutcomeForbidden, AuthReason: "forbidden", Status: 403})
	m.Request(proxy.RequestEvent{Target: "api", Outcome: proxy.OutcomeSuccess, Status: 200})
	if got := testutil.ToFloat64(m.authFailures.WithLabelValues("missing")); got != 2 {
		t.Errorf("missing: %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.authFailures.WithLabelValues("forbidden")); got != 1 {
		t.Errorf("forbidden: %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.authFailures); n != 2 {
		t.Errorf("%d auth failure series, want 2", n)
	}
}

// TestRequestsTotalAsTheOriginal: proxy_hopper_requests_total counts what
// proxy-hopper counts (each attempt through an IP, classified by its
// status; unmatched requests), responses_total only answers after the
// pool was asked, and the client requests keep their own counter.
func TestRequestsTotalAsTheOriginal(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	// One client request: a 503, a refused upstream, then a 500 (which
	// proxy-hopper neither retries nor calls a server error).
	m.Attempt(proxy.AttemptEvent{Target: "api", Addr: "a", Mode: "header", Tag: "t", Reason: "status_503", Status: 503})
	m.Attempt(proxy.AttemptEvent{Target: "api", Addr: "b", Mode: "header", Tag: "t", Reason: "upstream_refused"})
	m.Attempt(proxy.AttemptEvent{Target: "api", Addr: "c", Mode: "header", Tag: "t", OK: true, Status: 500})
	m.Request(proxy.RequestEvent{Target: "api", Mode: "header", Tag: "t", Outcome: proxy.OutcomeServerError, Status: 500, Retries: 2})
	// Refusals after the match: no attempt, no response counted.
	m.Request(proxy.RequestEvent{Target: "api", Mode: "header", Outcome: proxy.OutcomeForbidden, AuthReason: "forbidden", Status: 403})
	m.Request(proxy.RequestEvent{Target: "api", Mode: "header", Outcome: proxy.OutcomeClientLimit, Status: 429})
	// No IP: answered 503, counted as a response (and as expired by its
	// Acquire event).
	m.Request(proxy.RequestEvent{Target: "api", Mode: "header", Outcome: proxy.OutcomeNoIP, Status: 503})
	m.Request(proxy.RequestEvent{Mode: "header", Outcome: proxy.OutcomeNoMatch, Status: 502, Tag: "u"})

	want := `# HELP proxy_hopper_requests_total Requests sent through an upstream IP (each attempt, retries included) by target, outcome (success, rate_limited, server_error, connection_error, error) and tag, plus requests no target matched (target unmatched, outcome no_match).
# TYPE proxy_hopper_requests_total counter
proxy_hopper_requests_total{outcome="connection_error",tag="t",target="api"} 1
proxy_hopper_requests_total{outcome="no_match",tag="u",target="unmatched"} 1
proxy_hopper_requests_total{outcome="server_error",tag="t",target="api"} 1
proxy_hopper_requests_total{outcome="success",tag="t",target="api"} 1
# HELP proxy_hopper_responses_total Responses returned to clients of a target after its pool was asked for an IP, by target, HTTP status code and tag.
# TYPE proxy_hopper_responses_total counter
proxy_hopper_responses_total{status_code="500",tag="t",target="api"} 1
proxy_hopper_responses_total{status_code="503",tag="",target="api"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "proxy_hopper_requests_total", "proxy_hopper_responses_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.clientReqs.WithLabelValues("api", proxy.OutcomeServerError, "t")); got != 1 {
		t.Errorf("client requests (server_error, t) = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.retries.WithLabelValues("api")); got != 2 {
		t.Errorf("retries = %v, want 2", got)
	}
}

func TestRequestOutcome(t *testing.T) {
	for _, tc := range []struct {
		ev   proxy.AttemptEvent
		want string
	}{
		{proxy.AttemptEvent{OK: true, Status: 200}, proxy.OutcomeSuccess},
		{proxy.AttemptEvent{OK: true, Status: 404}, proxy.OutcomeSuccess},
		{proxy.AttemptEvent{OK: true, Status: 500}, proxy.OutcomeSuccess},
		{proxy.AttemptEvent{Reason: "status_429", Status: 429}, proxy.OutcomeRateLimited},
		{proxy.AttemptEvent{Reason: "status_502", Status: 502}, proxy.OutcomeServerError},
		{proxy.AttemptEvent{Reason: "status_504", Status: 504}, proxy.OutcomeServerError},
		{proxy.AttemptEvent{Reason: "proxy_status_407", Status: 407}, proxy.OutcomeConnectionError},
		{proxy.AttemptEvent{Reason: "upstream_timeout"}, proxy.OutcomeConnectionError},
		{proxy.AttemptEvent{Reason: "upstream_body", Status: 200}, proxy.OutcomeConnectionError},
		{proxy.AttemptEvent{Reason: "client_body"}, OutcomeError},
		{proxy.AttemptEvent{Reason: proxy.ReasonLocal}, OutcomeError},
	} {
		if got := RequestOutcome(tc.ev); got != tc.want {
			t.Errorf("RequestOutcome(%+v) = %q, want %q", tc.ev, got, tc.want)
		}
	}
}
