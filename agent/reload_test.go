package agent_test

// End-to-end tests of hot reload: real tinyproxy upstreams (each binds its
// outgoing connections to its own loopback address, so the origin sees
// which upstream carried a request), the agent in process, traffic on
// keep-alive client connections during every reload.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"log/slog"

	"github.com/proxy-hopper/proxy-hopper/agent"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// rlOrigin answers "via <source ip>" and counts, per source IP (that is,
// per upstream), the requests that arrived. /block/... waits for release.
type rlOrigin struct {
	URL     string
	arrived chan string // the source IP of each /block request

	mu      sync.Mutex
	arrival map[string][]time.Time
	release chan struct{}
}

func newRLOrigin(t *testing.T) *rlOrigin { return newRLOriginTLS(t, false) }

func newRLOriginTLS(t *testing.T, withTLS bool) *rlOrigin {
	o := &rlOrigin{arrived: make(chan string, 16), arrival: map[string][]time.Time{}, release: make(chan struct{})}
	newServer := httptest.NewServer
	if withTLS {
		newServer = httptest.NewTLSServer
	}
	srv := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		o.mu.Lock()
		o.arrival[ip] = append(o.arrival[ip], time.Now())
		rel := o.release
		o.mu.Unlock()
		if strings.Contains(r.URL.Path, "/block") {
			o.arrived <- ip
			select {
			case <-rel:
			case <-r.Context().Done():
			}
		} else {
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Fprintf(w, "via %s", ip)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(o.unblock)
	o.URL = srv.URL
	return o
}

// unblock lets every /block request waiting now finish.
func (o *rlOrigin) unblock() {
	o.mu.Lock()
	defer o.mu.Unlock()
	close(o.release)
	o.release = make(chan struct{})
}

// since counts the requests that arrived through ip at or after t0.
func (o *rlOrigin) since(ip string, t0 time.Time) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, at := range o.arrival[ip] {
		if !at.Before(t0) {
			n++
		}
	}
	return n
}

// rlTarget is one target of a generated config.
type rlTarget struct {
	name, regex    string
	ips            []string // empty: ipList: []
	interval, wait string   // minRequestInterval, maxQueueWait (0s, 5s when empty)
	retries        int
	extra          string // more lines of the target, indented by 4
}

func rlConfig(server string, ts ...rlTarget) string {
	var b strings.Builder
	b.WriteString("server:\n" + server + "targets:\n")
	for _, tg := range ts {
		if tg.interval == "" {
			tg.interval = "0s"
		}
		if tg.wait == "" {
			tg.wait = "5s"
		}
		fmt.Fprintf(&b, "  - name: %s\n    regex: '%s'\n    minRequestInterval: %s\n    maxQueueWait: %s\n    numRetries: %d\n    ipFailuresUntilQuarantine: 100\n",
			tg.name, tg.regex, tg.interval, tg.wait, tg.retries)
		b.WriteString(tg.extra)
		if len(tg.ips) == 0 {
			b.WriteString("    ipList: []\n")
			continue
		}
		b.WriteString("    ipList:\n")
		for _, ip := range tg.ips {
			fmt.Fprintf(&b, "      - %q\n", ip)
		}
	}
	return b.String()
}

// syncBuf is a log sink safe for concurrent writes and reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rlAgent is an agent started from a config file, running in process.
type rlAgent struct {
	t           *testing.T
	a           *agent.Agent
	proxyURL    *url.URL
	path        string
	server      string // the server block of every config written
	logs        *syncBuf
	metricsPort int
	reloads     int // successful reloads done through reload()
}

// rlServer is the server block for tests: metrics on, and the backend.
func rlServer(t *testing.T, backend string) (string, int) {
	port := testenv.FreePort(t, "127.0.0.1")
	s := fmt.Sprintf("  host: 127.0.0.1\n  metrics: true\n  metricsPort: %d\n  shutdownTimeout: 2s\n  probe: false\n", port)
	return s + backend, port
}

func startRLAgent(t *testing.T, server string, metricsPort int, ts ...rlTarget) *rlAgent {
	t.Helper()
	ra := &rlAgent{t: t, server: server, logs: &syncBuf{}, metricsPort: metricsPort}
	ra.path = filepath.Join(t.TempDir(), "config.yaml")
	ra.write(ts...)
	ra.start()
	return ra
}

// start runs the agent on the config at ra.path.
func (ra *rlAgent) start() {
	t := ra.t
	t.Helper()
	metricsPort := ra.metricsPort
	cfg, err := config.Load(ra.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ra.proxyURL, _ = url.Parse("http://" + ln.Addr().String())
	log := slog.New(slog.NewTextHandler(ra.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ra.a, err = agent.New(context.Background(), resolve(t, cfg), agent.Options{Listener: ln, Logger: log, ConfigPath: ra.path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ra.a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	testenv.WaitListening(t, fmt.Sprintf("127.0.0.1:%d", metricsPort), 5*time.Second)
}

// write replaces the config file in place.
func (ra *rlAgent) write(ts ...rlTarget) {
	ra.t.Helper()
	if err := os.WriteFile(ra.path, []byte(rlConfig(ra.server, ts...)), 0o600); err != nil {
		ra.t.Fatal(err)
	}
}

// reload writes a config and reloads it as SIGHUP does; it must apply.
func (ra *rlAgent) reload(ts ...rlTarget) agent.ReloadResult {
	ra.t.Helper()
	ra.write(ts...)
	res, err := ra.a.ReloadFile(context.Background())
	if err != nil {
		ra.t.Fatalf("reload: %v", err)
	}
	ra.reloads++
	return res
}

// scrape returns the agent's /metrics text.
func (ra *rlAgent) scrape() string {
	ra.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", ra.metricsPort))
	if err != nil {
		ra.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metric returns the value of one sample line (name{labels}) or -1.
func (ra *rlAgent) metric(series string) float64 {
	ra.t.Helper()
	for _, line := range strings.Split(ra.scrape(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				ra.t.Fatalf("metric %s: %q", series, line)
			}
			return v
		}
	}
	return -1
}

// rlResult is one request of the traffic.
type rlResult struct {
	start, end time.Time
	code       int
	body       string
	err        error
}

// traffic keeps clients sending requests, each on its own keep-alive
// connection, and records every result.
type traffic struct {
	mu    sync.Mutex
	res   []rlResult
	dials atomic.Int32
	stop  chan struct{}
	wg    sync.WaitGroup
	n     int
}

func startTraffic(t *testing.T, proxyURL *url.URL, target string, clients int) *traffic {
	tr := &traffic{stop: make(chan struct{}), n: clients}
	for range clients {
		hc := tr.client(t, proxyURL)
		tr.wg.Go(func() {
			for {
				select {
				case <-tr.stop:
					return
				default:
				}
				r := rlDo(hc, target)
				tr.mu.Lock()
				tr.res = append(tr.res, r)
				tr.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	t.Cleanup(tr.end)
	return tr
}

// client is an HTTP client through the agent with at most one connection,
// whose dials traffic counts.
func (tr *traffic) client(t *testing.T, proxyURL *url.URL) *http.Client {
	d := &net.Dialer{}
	htr := &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		MaxConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			tr.dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(htr.CloseIdleConnections)
	return &http.Client{Transport: htr, Timeout: 30 * time.Second}
}

func (tr *traffic) end() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
}

// between returns the results of requests started in [from, to).
func (tr *traffic) between(from, to time.Time) []rlResult {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []rlResult
	for _, r := range tr.res {
		if !r.start.Before(from) && r.start.Before(to) {
			out = append(out, r)
		}
	}
	return out
}

func rlDo(hc *http.Client, target string) rlResult {
	r := rlResult{start: time.Now()}
	resp, err := hc.Get(target)
	if err != nil {
		r.err, r.end = err, time.Now()
		return r
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.code, r.body, r.err, r.end = resp.StatusCode, string(b), err, time.Now()
	return r
}

// tally counts results: 200s by the upstream IP that carried them, and
// the rest by status (0 for transport errors).
func tally(rs []rlResult) (via map[string]int, other map[int]int) {
	via, other = map[string]int{}, map[int]int{}
	for _, r := range rs {
		if r.err == nil && r.code == 200 {
			via[strings.TrimPrefix(r.body, "via ")]++
		} else {
			other[r.code]++
		}
	}
	return via, other
}

func hostOf(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

// established counts the ESTABLISHED TCP connections (in this network
// namespace) to addr, an IPv4 ip:port: here, the agent's connections to
// that upstream proxy.
func established(t *testing.T, addr string) int {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	ip := net.ParseIP(host).To4()
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == want && f[3] == "01" {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deadUpstream is an address where nothing listens.
func deadUpstream(t *testing.T) string {
	return net.JoinHostPort("127.0.0.9", strconv.Itoa(testenv.FreePort(t, "127.0.0.9")))
}

func TestReloadIPsMemory(t *testing.T) {
	t.Parallel()
	server, mport := rlServer(t, "")
	testReloadIPs(t, server, mport)
}

func TestReloadIPsRedis(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	server, mport := rlServer(t, fmt.Sprintf("  backend: redis\n  redisUrl: %q\n  redisKeyPrefix: %q\n  redisLeaseTtl: 5s\n", srv.URL(0), rdPrefix()))
	testReloadIPs(t, server, mport)
}

// testReloadIPs drives traffic on keep-alive connections through every IP
// change: add, remove (with a request in flight through the removed IP),
// swap a broken IP for a healthy one, remove all (queued requests served
// by the restore; those past maxQueueWait get 503), restore, and a changed
// minRequestInterval. No client connection is dropped on the way.
func testReloadIPs(t *testing.T, server string, mport int) {
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 3) // A, B, C on 127.0.0.2, .3, .4
	A, B, C := ups[0], ups[1], ups[2]
	re := regexp.QuoteMeta(o.URL)
	tgt := func(ips ...string) rlTarget { return rlTarget{name: "origin", regex: re, ips: ips} }
	ra := startRLAgent(t, server, mport, tgt(A))
	const clients = 4
	tr := startTraffic(t, ra.proxyURL, o.URL+"/x", clients)
	time.Sleep(300 * time.Millisecond)

	// Add B: it takes traffic at once.
	res := ra.reload(tgt(A, B))
	if res.IPsAdded != 1 || res.IPsRemoved != 0 || len(res.Changed) != 1 {
		t.Errorf("add B: result %+v", res)
	}
	t1 := time.Now()
	waitFor(t, "B carries requests after it was added", 3*time.Second, func() bool { return o.since(hostOf(B), t1) > 0 })
	time.Sleep(200 * time.Millisecond)

	// Remove the IP a request is in flight through: that request completes,
	// and no new request goes there.
	blockClient := tr.client(t, ra.proxyURL)
	blocked := make(chan rlResult, 1)
	go func() { blocked <- rlDo(blockClient, o.URL+"/block") }()
	var X string
	select {
	case X = <-o.arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the /block request did not arrive")
	}
	removed, kept := A, B
	if X == hostOf(B) {
		removed, kept = B, A
	}
	if n := established(t, removed); n == 0 {
		t.Fatalf("no connection to %s while a request is in flight through it", removed)
	}
	res = ra.reload(tgt(kept))
	if res.IPsRemoved != 1 {
		t.Errorf("remove %s: result %+v", removed, res)
	}
	t2 := time.Now()
	time.Sleep(500 * time.Millisecond)
	if n := o.since(X, t2); n != 0 {
		t.Errorf("%d request(s) went through removed %s after the reload", n, removed)
	}
	o.unblock()
	select {
	case r := <-blocked:
		if r.err != nil || r.code != 200 || r.body != "via "+X {
			t.Errorf("request in flight through removed %s: %d %q %v", removed, r.code, r.body, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request in flight through the removed IP did not complete")
	}
	waitFor(t, "connections to the removed IP closed once drained", 3*time.Second, func() bool { return established(t, removed) == 0 })
	waitFor(t, "removed IP gone from the pool gauges", 3*time.Second, func() bool {
		return !strings.Contains(ra.scrape(), `proxy_hopper_ip_failure_count{address="`+removed+`"`)
	})
	if n := o.since(X, t2); n != 0 {
		t.Errorf("%d request(s) went through removed %s after its in-flight request ended", n, removed)
	}

	// Swap a broken IP for a healthy one.
	dead := deadUpstream(t)
	ra.reload(tgt(kept, dead))
	t3 := time.Now()
	waitFor(t, "requests fail through the broken IP", 3*time.Second, func() bool {
		_, other := tally(tr.between(t3, time.Now()))
		return other[502] > 0
	})
	ra.reload(tgt(kept, C))
	t4 := time.Now()
	time.Sleep(600 * time.Millisecond)
	via, other := tally(tr.between(t4, time.Now()))
	if len(other) > 0 || via[hostOf(C)] == 0 {
		t.Errorf("after swapping the broken IP for C: served %v, failed %v; want every request served, C among them", via, other)
	}

	// Remove all IPs: requests queue (maxQueueWait 5s) and a restore
	// serves them.
	ra.reload(tgt())
	t5 := time.Now()
	time.Sleep(time.Second)
	if n := ra.metric(`proxy_hopper_ips{state="available",target="origin"}`); n != 0 {
		t.Errorf("available IPs with an empty list: %v", n)
	}
	ra.reload(tgt(A))
	t6 := time.Now()
	time.Sleep(300 * time.Millisecond)
	queued := tr.between(t5, t6)
	via, other = tally(queued)
	if len(queued) == 0 || len(other) > 0 || via[hostOf(A)] != len(queued) {
		t.Errorf("requests queued on the empty pool: served %v, failed %v of %d; want all served by the restored A", via, other, len(queued))
	}
	for _, r := range queued {
		if r.end.Before(t6) {
			t.Errorf("a request started %s after the pool was emptied was answered before the restore", r.start.Sub(t5))
		}
	}

	// Remove all with a short maxQueueWait: requests past it get the
	// usual 503 no_ip_available.
	short := tgt()
	short.wait = "400ms"
	ra.reload(short)
	t7 := time.Now()
	time.Sleep(1200 * time.Millisecond)
	late := tr.between(t7.Add(50*time.Millisecond), time.Now().Add(-500*time.Millisecond))
	if len(late) == 0 {
		t.Fatal("no request during the empty period")
	}
	for _, r := range late {
		var doc struct{ Error string }
		_ = json.Unmarshal([]byte(r.body), &doc)
		if r.code != 503 || doc.Error != "no_ip_available" || r.end.Sub(r.start) < 350*time.Millisecond {
			t.Errorf("request on an empty pool past maxQueueWait: %d %q after %s; want 503 no_ip_available after 400ms", r.code, doc.Error, r.end.Sub(r.start))
			break
		}
	}

	// Restore.
	ra.reload(tgt(A, B))
	t8 := time.Now()
	time.Sleep(500 * time.Millisecond)
	via, other = tally(tr.between(t8, time.Now()))
	if len(other) > 0 || via[hostOf(A)] == 0 || via[hostOf(B)] == 0 {
		t.Errorf("after restore: served %v, failed %v; want A and B serving, no failure", via, other)
	}
	tr.end()

	// minRequestInterval changes: one IP, 1s between uses.
	slow := tgt(A)
	slow.interval = "1s"
	ra.reload(slow)
	hc := tr.client(t, ra.proxyURL)
	time.Sleep(1100 * time.Millisecond) // A's earlier cooldown (0s) is over anyway
	start := time.Now()
	for range 3 {
		if r := rlDo(hc, o.URL+"/x"); r.code != 200 {
			t.Fatalf("request with minRequestInterval 1s: %d %q %v", r.code, r.body, r.err)
		}
	}
	if d := time.Since(start); d < 1900*time.Millisecond {
		t.Errorf("3 requests on one IP with minRequestInterval 1s took %s, want >= 2s", d)
	}
	ra.reload(tgt(A))
	time.Sleep(1100 * time.Millisecond) // the last 1s cooldown ends
	start = time.Now()
	for range 3 {
		if r := rlDo(hc, o.URL+"/x"); r.code != 200 {
			t.Fatalf("request with minRequestInterval 0: %d %q %v", r.code, r.body, r.err)
		}
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("3 requests with minRequestInterval 0 took %s", d)
	}

	// Keep-alive client connections survived every reload.
	if n := int(tr.dials.Load()); n != clients+2 {
		t.Errorf("clients dialled the agent %d times, want %d (one connection each)", n, clients+2)
	}
	if got := ra.metric(`proxy_hopper_config_reloads_total{result="success"}`); got != float64(ra.reloads) {
		t.Errorf("config_reloads_total{success} = %v, want %d", got, ra.reloads)
	}
	if got := ra.metric(`proxy_hopper_config_reloads_total{result="failure"}`); got != 0 {
		t.Errorf("config_reloads_total{failure} = %v, want 0", got)
	}
}

// resolve resolves a loaded config, failing the test on a problem.
func resolve(t *testing.T, cfg *config.Config) *config.Resolved {
	t.Helper()
	res, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	return res
}
