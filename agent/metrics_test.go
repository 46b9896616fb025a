package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestMetricsEndToEnd runs an agent with server.metrics on a free port, a
// target over a real tinyproxy and a dead upstream, drives requests through
// it and scrapes /metrics over HTTP.
func TestMetricsEndToEnd(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello")
	}))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	dead := net.JoinHostPort("127.0.0.3", fmt.Sprint(testenv.FreePort(t, "127.0.0.3"))) // refuses
	cfgPath, metricsPort := writeMetricsConfig(t, fmt.Sprintf(`
  shutdownTimeout: 2s
  probe: false
proxyProviders:
  - name: local
    ipList: ["%s", "%s"]
    regionTag: lab
ipPools:
  - name: both
    ipRequests:
      - provider: local
        count: 2
targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipPool: both
    minRequestInterval: 0
    maxQueueWait: 5s
    numRetries: 2
    ipFailuresUntilQuarantine: 1
    quarantineTime: 1h
    identity:
      enabled: true
      rotateAfterRequests: 1
`, tp.Addr, dead))
	a, ln, metricsAddr, stop := runMetricsAgent(t, cfgPath, metricsPort)
	// The port accepts as soon as Run has opened it, a moment before
	// MetricsAddr is set.
	testenv.Eventually(t, 5*time.Second, func() error {
		if a.MetricsAddr() == nil {
			return errors.New("still waiting for MetricsAddr")
		}
		return nil
	})
	if got := a.MetricsAddr(); got.String() != metricsAddr {
		t.Errorf("MetricsAddr = %v, want %s", got, metricsAddr)
	}

	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	get := func(target, tag string, body ...byte) int {
		t.Helper()
		return headerRequest(t, client, ln.Addr().String(), target, tag, body)
	}
	// Two IPs in rotation: one of the three requests first meets the dead
	// upstream, which is quarantined at once, and is retried on tinyproxy.
	// The last one carries a 1000-byte body (bytes_total up); each answer
	// is "hello" (bytes_total down: 15).
	for i := range 3 {
		var body []byte
		if i == 2 {
			body = bytes.Repeat([]byte("b"), 1000)
		}
		if code := get(origin.URL, "e2e", body...); code != 200 {
			t.Fatalf("request through tinyproxy: %d", code)
		}
	}
	if code := get("http://unmatched.example/", ""); code != 502 {
		t.Fatalf("unmatched request: %d, want 502", code)
	}

	// Request hooks run just after the client has its answer: scrape until
	// the last request is counted.
	body := scrapeUntil(t, client, metricsAddr, func(b string) error {
		if !strings.Contains(b, `target="unmatched"`) {
			return errors.New("the unmatched request is not counted yet")
		}
		return nil
	})
	deadLabels := fmt.Sprintf(`{address=%q,provider="local",region="lab",target="web"}`, dead)
	for _, want := range []string{
		`proxy_hopper_client_requests_total{outcome="success",tag="e2e",target="web"} 3`,
		`proxy_hopper_requests_total{outcome="success",tag="e2e",target="web"} 3`,
		`proxy_hopper_requests_total{outcome="connection_error",tag="e2e",target="web"} 1`,
		`proxy_hopper_requests_total{outcome="no_match",tag="",target="unmatched"} 1`,
		`proxy_hopper_responses_total{status_code="200",tag="e2e",target="web"} 3`,
		`proxy_hopper_retries_total{target="web"} 1`,
		`proxy_hopper_attempts_total{outcome="success",target="web"} 3`,
		`proxy_hopper_attempts_total{outcome="connection_error",target="web"} 1`,
		`proxy_hopper_request_duration_seconds_count{target="web"} 4`,
		`proxy_hopper_queue_wait_seconds_count{target="web"} 4`,
		`proxy_hopper_ip_quarantine_events_total` + deadLabels + ` 1`,
		`proxy_hopper_ip_failure_count` + deadLabels + ` 1`,
		`proxy_hopper_quarantined_ips{target="web"} 1`,
		`proxy_hopper_available_ips{target="web"} 1`,
		`proxy_hopper_ips{state="quarantined",target="web"} 1`,
		`proxy_hopper_queue_depth{target="web"} 0`,
		`proxy_hopper_identity_rotations_total{reason="requests",target="web"} 3`,
		`proxy_hopper_bytes_total{direction="up",target="web"} 1000`,
		`proxy_hopper_bytes_total{direction="down",target="web"} 15`,
		"proxy_hopper_active_connections ",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(body, "proxy_hopper_"))
	}

	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if c, err := net.Dial("tcp", metricsAddr); err == nil {
		c.Close()
		t.Errorf("metrics endpoint still open after Run returned")
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestMetricsHostAndToken: server.metricsHost picks the bind address
// (not server.host), and with server.metricsToken set /metrics answers
// 401 with WWW-Authenticate (no target or upstream address in it) unless
// the token comes as a Bearer token or a Basic password; wrong tokens from
// one source are limited (429).
func TestMetricsHostAndToken(t *testing.T) {
	const tok = "metrics-token-0123456789"
	port := testenv.FreePort(t, "127.0.0.5")
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server:
  host: 127.0.0.1
  metrics: true
  metricsHost: 127.0.0.5
  metricsPort: %d
  metricsToken: %s
  shutdownTimeout: 2s
  probe: false
targets:
  - name: web
    regex: 'example\.invalid'
    ipList: ["127.0.0.9:3128"]
`, port, tok)), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _ := newFileAgent(t, cfgPath)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	addr := net.JoinHostPort("127.0.0.5", fmt.Sprint(port))
	testenv.WaitListening(t, addr, 5*time.Second)
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(port)), time.Second); err == nil {
		c.Close()
		t.Fatal("metrics listen on server.host too")
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	scrape := func(auth string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	resp, body := scrape("")
	if resp.StatusCode != 401 || len(resp.Header.Values("WWW-Authenticate")) == 0 || strings.Contains(body, "127.0.0.9") || strings.Contains(body, "web") {
		t.Fatalf("no token: %d %v %q", resp.StatusCode, resp.Header.Values("WWW-Authenticate"), body)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("prometheus:"+tok))
	for _, auth := range []string{"Bearer " + tok, "bearer " + tok, basic} {
		if resp, body := scrape(auth); resp.StatusCode != 200 || !strings.Contains(body, `address="127.0.0.9:3128"`) {
			t.Fatalf("%.10s…: %d %.300s", auth, resp.StatusCode, body)
		}
	}
	for i := range 10 {
		if resp, _ := scrape(fmt.Sprintf("Bearer wrong-%d", i)); resp.StatusCode != 401 {
			t.Fatalf("wrong token %d: %d", i, resp.StatusCode)
		}
	}
	if resp, _ := scrape("Bearer " + tok); resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("after 10 wrong tokens: %d, want 429 with Retry-After", resp.StatusCode)
	}
}

// TestMetricsRecordedAsTheOriginal drives an agent over two real
// tinyproxies and checks that each series is recorded when and with the
// labels proxy-hopper records it: requests_total and
// request_duration_seconds once per attempt, with the client's tag;
// queue_wait_seconds once per IP obtained (retries too); a retry that
// finds no untried IP within maxQueueWait counts in queue_expired_total,
// not as a retry exhaustion; a CONNECT tunnel's attempt counts in
// requests_total with its tag but its lifetime is no latency; a request no
// target matched keeps its tag.
func TestMetricsRecordedAsTheOriginal(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/busy") { // the target header's path, then the request's
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, "hello")
	}))
	defer origin.Close()
	tpA := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	tpB := testenv.StartTinyproxy(t, "127.0.0.4", testenv.TinyproxyOptions{})
	// An IP cools down 1.5s after each use, longer than maxQueueWait.
	cfgPath, metricsPort := writeMetricsConfig(t, fmt.Sprintf(`
  shutdownTimeout: 2s
  probe: false
targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipList: ["%s", "%s"]
    minRequestInterval: 1500ms
    maxQueueWait: 200ms
    numRetries: 1
    ipFailuresUntilQuarantine: 10
`, tpA.Addr, tpB.Addr))
	_, ln, metricsAddr, _ := runMetricsAgent(t, cfgPath, metricsPort)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	get := func(target, tag string) int {
		t.Helper()
		return headerRequest(t, client, ln.Addr().String(), target, tag, nil)
	}
	// One IP answers and cools down; the next request's IP gets a 503 and
	// its retry finds only the cooling IP, which does not come free within
	// maxQueueWait: the 503 is the answer.
	if code := get(origin.URL, "t1"); code != 200 {
		t.Fatalf("first request: %d, want 200", code)
	}
	start := time.Now()
	if code := get(origin.URL+"/busy", "t1"); code != 503 {
		t.Fatalf("request whose retry finds no IP: %d, want the origin's 503", code)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the retry waited %s, longer than the cooldown allows the test to hold", d)
	}
	// A tunnel once both IPs cooled down, tagged.
	time.Sleep(1600 * time.Millisecond)
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	authority := strings.TrimPrefix(origin.URL, "http://")
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s: t2\r\n\r\n", authority, authority, proxy.HeaderTag)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", authority)
	if resp, err = http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET through the tunnel: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	c.Close()
	if code := get("http://unmatched.example/", "t3"); code != 502 {
		t.Fatalf("unmatched request: %d, want 502", code)
	}

	want := []string{
		`proxy_hopper_requests_total{outcome="success",tag="t1",target="web"} 1`,
		`proxy_hopper_requests_total{outcome="server_error",tag="t1",target="web"} 1`,
		`proxy_hopper_requests_total{outcome="success",tag="t2",target="web"} 1`,
		`proxy_hopper_requests_total{outcome="no_match",tag="t3",target="unmatched"} 1`,
		`proxy_hopper_responses_total{status_code="200",tag="t1",target="web"} 1`,
		`proxy_hopper_responses_total{status_code="503",tag="t1",target="web"} 1`,
		`proxy_hopper_retries_total{target="web"} 1`,
		`proxy_hopper_queue_expired_total{target="web"} 1`,
		`proxy_hopper_retry_exhaustions_total{target="web"} 0`,
		// Two HTTP attempts; the tunnel's is left out.
		`proxy_hopper_request_duration_seconds_count{target="web"} 2`,
		`proxy_hopper_request_duration_seconds_count{target="unmatched"} 1`,
		// Three IPs obtained: two for the HTTP requests, one for the tunnel.
		`proxy_hopper_queue_wait_seconds_count{target="web"} 3`,
	}
	// The tunnel's attempt is counted when it ends, just after the
	// client closed it: scrape until it shows.
	body := scrapeUntil(t, client, metricsAddr, func(b string) error {
		if w := `proxy_hopper_attempts_total{outcome="success",target="web"} 2`; !strings.Contains(b, w) {
			return fmt.Errorf("the tunnel's attempt is not counted yet (no %s)", w)
		}
		return nil
	})
	for _, w := range want {
		if strings.HasSuffix(w, " 0") {
			// A counter never incremented may be absent: absent is zero.
			name, _, _ := strings.Cut(w, "{")
			if strings.Contains(body, name+"{") && !strings.Contains(body, w) {
				t.Errorf("/metrics has %s other than 0", name)
			}
			continue
		}
		if !strings.Contains(body, w) {
			t.Errorf("/metrics lacks %s", w)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(body, "proxy_hopper_"))
	}
}

// scrapeUntil scrapes metricsAddr until ready accepts the body (within 5s)
// and returns that body.
func scrapeUntil(t *testing.T, client *http.Client, metricsAddr string, ready func(body string) error) string {
	t.Helper()
	var body string
	testenv.Eventually(t, 5*time.Second, func() error {
		resp, err := client.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return ready(body)
	})
	return body
}

// headerRequest sends a header-mode request for target through the proxy
// at proxyAddr (GET, or POST with body), tagged unless tag is "", and
// returns the status.
func headerRequest(t *testing.T, client *http.Client, proxyAddr, target, tag string, body []byte) int {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+proxyAddr+"/x", nil)
	if body != nil {
		req, _ = http.NewRequest("POST", "http://"+proxyAddr+"/x", bytes.NewReader(body))
	}
	req.Header.Set(proxy.HeaderTarget, target)
	if tag != "" {
		req.Header.Set(proxy.HeaderTag, tag)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
