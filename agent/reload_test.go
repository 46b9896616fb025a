package agent_test

// End-to-end tests of hot reload: real tinyproxy upstreams (each binds its
// outgoing connections to its own loopback address, so the origin sees
// which upstream carried a request), the agent in process, traffic on
// keep-alive client connections during every reload.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"github.com/proxy-hopper/proxy-hopper/pool"
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
	reloads     int        // successful reloads done through reload()
	clock       pool.Clock // the agent's clock; nil: the wall clock
}

// rlServer is the server block for tests: metrics on, and the backend.
func rlServer(t *testing.T, backend string) (string, int) {
	port := testenv.FreePort(t, "127.0.0.1")
	s := fmt.Sprintf("  host: 127.0.0.1\n  metrics: true\n  metricsPort: %d\n  shutdownTimeout: 2s\n  probe: false\n", port)
	return s + backend, port
}

func startRLAgent(t *testing.T, server string, metricsPort int, ts ...rlTarget) *rlAgent {
	t.Helper()
	return startRLAgentClock(t, nil, server, metricsPort, ts...)
}

// startRLAgentClock starts the agent with its pool policy on clock.
func startRLAgentClock(t *testing.T, clock pool.Clock, server string, metricsPort int, ts ...rlTarget) *rlAgent {
	t.Helper()
	ra := &rlAgent{t: t, server: server, logs: &syncBuf{}, metricsPort: metricsPort, clock: clock}
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
	ra.a, err = agent.New(context.Background(), resolve(t, cfg), agent.Options{Listener: ln, Logger: log, ConfigPath: ra.path, Clock: ra.clock})
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

// ended returns the results of requests that ended at or after from.
func (tr *traffic) ended(from time.Time) []rlResult {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []rlResult
	for _, r := range tr.res {
		if !r.end.Before(from) {
			out = append(out, r)
		}
	}
	return out
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

// threeRequests sends three requests, one after the other, on hc and
// returns the pool time they took: with a clock it advances clock by 100ms
// whenever no answer came for 20ms (a request waits for a cooling IP); with
// none (nil) the requests must be answered without the pool clock moving.
func threeRequests(t *testing.T, clock *pool.FakeClock, hc *http.Client, target, interval string) time.Duration {
	t.Helper()
	done := make(chan rlResult, 3)
	go func() {
		for range 3 {
			done <- rlDo(hc, target)
		}
	}()
	var moved time.Duration
	deadline := time.After(10 * time.Second)
	for got := 0; got < 3; {
		select {
		case r := <-done:
			if r.code != 200 {
				t.Fatalf("request with minRequestInterval %s: %d %q %v", interval, r.code, r.body, r.err)
			}
			got++
		case <-time.After(20 * time.Millisecond):
			if clock == nil {
				continue
			}
			if moved >= 10*time.Second {
				t.Fatalf("requests with minRequestInterval %s: %d of 3 answered after %s of pool time", interval, got, moved)
			}
			clock.Advance(100 * time.Millisecond)
			moved += 100 * time.Millisecond
		case <-deadline:
			t.Fatalf("requests with minRequestInterval %s: %d of 3 answered within 10s", interval, got)
		}
	}
	return moved
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
// minRequestInterval. No client connection is dropped on the way. Pool
// policy (queue waits, cooldowns) runs on a fake clock.
func testReloadIPs(t *testing.T, server string, mport int) {
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 3) // A, B, C on 127.0.0.2, .3, .4
	A, B, C := ups[0], ups[1], ups[2]
	re := regexp.QuoteMeta(o.URL)
	tgt := func(ips ...string) rlTarget { return rlTarget{name: "origin", regex: re, ips: ips} }
	clock := pool.NewFakeClock(time.Now().Truncate(time.Millisecond)) // Redis keeps milliseconds
	ra := startRLAgentClock(t, clock, server, mport, tgt(A))
	const clients = 4
	tr := startTraffic(t, ra.proxyURL, o.URL+"/x", clients)
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := len(tr.between(time.Time{}, time.Now())); n < clients {
			return fmt.Errorf("%d requests answered, want traffic on every client", n)
		}
		return nil
	})

	// Add B: it takes traffic at once.
	res := ra.reload(tgt(A, B))
	if res.IPsAdded != 1 || res.IPsRemoved != 0 || len(res.Changed) != 1 {
		t.Errorf("add B: result %+v", res)
	}
	t1 := time.Now()
	testenv.Eventually(t, 3*time.Second, func() error {
		if o.since(hostOf(B), t1) <= 0 {
			return errors.New("still waiting for B carries requests after it was added")
		}
		return nil
	})
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
	testenv.Eventually(t, 3*time.Second, func() error {
		if established(t, removed) != 0 {
			return errors.New("still waiting for connections to the removed IP closed once drained")
		}
		return nil
	})
	testenv.Eventually(t, 3*time.Second, func() error {
		if strings.Contains(ra.scrape(), `proxy_hopper_ip_failure_count{address="`+removed+`"`) {
			return errors.New("still waiting for removed IP gone from the pool gauges")
		}
		return nil
	})
	if n := o.since(X, t2); n != 0 {
		t.Errorf("%d request(s) went through removed %s after its in-flight request ended", n, removed)
	}

	// Swap a broken IP for a healthy one.
	dead := deadUpstream(t)
	ra.reload(tgt(kept, dead))
	t3 := time.Now()
	testenv.Eventually(t, 3*time.Second, func() error {
		_, other := tally(tr.between(t3, time.Now()))
		if other[502] <= 0 {
			return errors.New("still waiting for requests fail through the broken IP")
		}
		return nil
	})
	ra.reload(tgt(kept, C))
	t4 := time.Now()
	testenv.Eventually(t, 5*time.Second, func() error {
		if via, _ := tally(tr.between(t4, time.Now())); via[hostOf(C)] < clients {
			return fmt.Errorf("%d requests through C since the swap, want %d", via[hostOf(C)], clients)
		}
		return nil
	})
	via, other := tally(tr.between(t4, time.Now()))
	if len(other) > 0 || via[hostOf(C)] == 0 {
		t.Errorf("after swapping the broken IP for C: served %v, failed %v; want every request served, C among them", via, other)
	}

	// Remove all IPs: requests queue (maxQueueWait 5s) and a restore
	// serves them.
	ra.reload(tgt())
	t5 := time.Now()
	queueDepth := func(n int) func() error {
		return func() error {
			if got := ra.metric(`proxy_hopper_queue_depth{target="origin"}`); got != float64(n) {
				return fmt.Errorf("queue depth %v, want %d", got, n)
			}
			return nil
		}
	}
	testenv.Eventually(t, 5*time.Second, queueDepth(clients))
	if n := ra.metric(`proxy_hopper_ips{state="available",target="origin"}`); n != 0 {
		t.Errorf("available IPs with an empty list: %v", n)
	}
	ra.reload(tgt(A))
	t6 := time.Now()
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := len(tr.ended(t6)); n < clients {
			return fmt.Errorf("%d of the %d queued requests answered", n, clients)
		}
		return nil
	})
	// The queued requests: started before the restore, answered after it
	// (some started while the emptying reload was still returning, before
	// t5, on a loaded machine).
	var queued []rlResult
	for _, r := range tr.ended(t6) {
		if r.start.Before(t6) {
			queued = append(queued, r)
		}
	}
	via, other = tally(queued)
	if len(queued) == 0 || len(other) > 0 || via[hostOf(A)] != len(queued) {
		t.Errorf("requests queued on the empty pool: served %v, failed %v of %d; want all served by the restored A", via, other, len(queued))
	}
	for _, r := range tr.between(t5, t6) {
		if r.end.Before(t6) {
			t.Errorf("a request started %s after the pool was emptied was answered before the restore", r.start.Sub(t5))
		}
	}

	// Remove all with a short maxQueueWait: requests past it get the
	// usual 503 no_ip_available.
	short := tgt()
	short.wait = "400ms"
	ra.reload(short)
	// Requests queued before the reload wait up to their 5s: let them
	// go, so that every client waits with the new 400ms.
	testenv.Eventually(t, 5*time.Second, queueDepth(clients))
	t7 := time.Now()
	clock.Advance(5 * time.Second)
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := len(tr.ended(t7)); n < clients {
			return fmt.Errorf("%d of the %d requests queued before the reload answered", n, clients)
		}
		return nil
	})
	testenv.Eventually(t, 5*time.Second, queueDepth(clients))
	t7 = time.Now()
	clock.Advance(400*time.Millisecond - time.Nanosecond)
	// No queue timer is due: nothing may answer. 100ms is ample for an
	// answer to cross loopback.
	time.Sleep(100 * time.Millisecond)
	if late := tr.ended(t7); len(late) != 0 {
		t.Errorf("%d request(s) on the empty pool answered before maxQueueWait (400ms): first %d %q", len(late), late[0].code, late[0].body)
	}
	clock.Advance(time.Nanosecond)
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := len(tr.ended(t7)); n < clients {
			return fmt.Errorf("%d of the %d requests past maxQueueWait answered", n, clients)
		}
		return nil
	})
	for _, r := range tr.ended(t7) {
		var doc struct{ Error string }
		_ = json.Unmarshal([]byte(r.body), &doc)
		if r.code != 503 || doc.Error != "no_ip_available" {
			t.Errorf("request on an empty pool past maxQueueWait: %d %q; want 503 no_ip_available", r.code, doc.Error)
			break
		}
	}

	// Restore.
	ra.reload(tgt(A, B))
	t8 := time.Now()
	testenv.Eventually(t, 5*time.Second, func() error {
		if via, _ := tally(tr.between(t8, time.Now())); via[hostOf(A)] == 0 || via[hostOf(B)] == 0 {
			return fmt.Errorf("served %v since the restore, want A and B", via)
		}
		return nil
	})
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
	// A's earlier cooldown (0s) is over anyway. The clock moves in 100ms
	// steps while a request waits for A: the third request cannot be
	// served before 2s of pool time.
	if d := threeRequests(t, clock, hc, o.URL+"/x", "1s"); d < 2*time.Second {
		t.Errorf("3 requests on one IP with minRequestInterval 1s took %s of pool time, want 2s", d)
	}
	ra.reload(tgt(A))
	clock.Advance(time.Second) // the last 1s cooldown ends
	// With no cooldown, three requests need no pool time at all.
	threeRequests(t, nil, hc, o.URL+"/x", "0s")

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
