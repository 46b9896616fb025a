package agent_test

// End-to-end tests of backend: redis: real redis-server, real agents (in
// process, and the built binary for kill -9), real tinyproxy upstreams.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/agent"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// rdOrigin is the origin behind the upstreams. Each upstream tinyproxy
// binds its outgoing connections to its own loopback address, so the
// source IP of a request says which upstream (pool IP) carried it. The
// origin records, per upstream, the requests in flight (more than one at a
// time is an overlap) and when each began and ended.
type rdOrigin struct {
	URL     string
	block   chan struct{} // /block waits for it to close
	blocked atomic.Int32

	mu       sync.Mutex
	inflight map[string]int
	overlaps []string
	visits   map[string][]rdSpan
}

type rdSpan struct{ start, end time.Time }

func newRDOrigin(t *testing.T) *rdOrigin {
	o := &rdOrigin{block: make(chan struct{}), inflight: map[string]int{}, visits: map[string][]rdSpan{}}
	srv := httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(srv.Close)
	t.Cleanup(o.unblock)
	o.URL = srv.URL
	return o
}

var rdUnblockMu sync.Mutex

func (o *rdOrigin) unblock() {
	rdUnblockMu.Lock()
	defer rdUnblockMu.Unlock()
	select {
	case <-o.block:
	default:
		close(o.block)
	}
}

func (o *rdOrigin) serve(w http.ResponseWriter, r *http.Request) {
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	o.mu.Lock()
	o.inflight[ip]++
	if n := o.inflight[ip]; n > 1 {
		o.overlaps = append(o.overlaps, fmt.Sprintf("%s: %d requests at once at %s", ip, n, time.Now().Format("15:04:05.000")))
	}
	start := time.Now()
	o.mu.Unlock()
	switch r.URL.Path {
	case "/slow":
		time.Sleep(10 * time.Millisecond)
	case "/block":
		o.blocked.Add(1)
		select {
		case <-o.block:
		case <-r.Context().Done():
		}
	}
	end := time.Now()
	o.mu.Lock()
	o.inflight[ip]--
	o.visits[ip] = append(o.visits[ip], rdSpan{start, end})
	o.mu.Unlock()
	fmt.Fprintf(w, "via %s", ip)
}

// rdUpstreams starts n tinyproxy upstreams on 127.0.0.2, 127.0.0.3, ...
func rdUpstreams(t *testing.T, n int) []string {
	var addrs []string
	for i := range n {
		ip := fmt.Sprintf("127.0.0.%d", i+2)
		tp := testenv.StartTinyproxy(t, ip, testenv.TinyproxyOptions{Extra: "Bind " + ip + "\n"})
		addrs = append(addrs, tp.Addr)
	}
	return addrs
}

type rdConf struct {
	redisURL, prefix string
	port             int
	origin           string
	ups              []string
	interval         time.Duration
	leaseTTL         time.Duration
}

func (c rdConf) write(t *testing.T) string {
	var b strings.Builder
	fmt.Fprintf(&b, `server:
  host: 127.0.0.1
  port: %d
  backend: redis
  redisUrl: %q
  redisKeyPrefix: %q
  redisLeaseTtl: %s
  probe: false
  shutdownTimeout: 2s
targets:
  - name: origin
    regex: '^%s(/|$)'
    minRequestInterval: %s
    maxQueueWait: 10s
    numRetries: 0
    ipFailuresUntilQuarantine: 5
    quarantineTime: 10s
    ipList:
`, c.port, c.redisURL, c.prefix, c.leaseTTL, regexp.QuoteMeta(c.origin), c.interval)
	for _, u := range c.ups {
		fmt.Fprintf(&b, "      - %q\n", u)
	}
	p := filepath.Join(t.TempDir(), "proxy-hopper.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rdAgent is an agent running in this process.
type rdAgent struct {
	a     *agent.Agent
	url   *url.URL
	done  chan error
	mu    sync.Mutex
	addrs map[string]int // attempts per upstream
}

func startRDAgent(t *testing.T, c rdConf, log *slog.Logger) *rdAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.port = ln.Addr().(*net.TCPAddr).Port
	cfg, err := config.Load(c.write(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ra := &rdAgent{done: make(chan error, 1), addrs: map[string]int{}}
	hooks := proxy.Hooks{Attempt: func(e proxy.AttemptEvent) {
		ra.mu.Lock()
		ra.addrs[e.Addr]++
		ra.mu.Unlock()
	}}
	ra.a, err = agent.New(context.Background(), resolve(t, cfg), agent.Options{Listener: ln, Logger: log, Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	ra.url, _ = url.Parse("http://" + ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { ra.done <- ra.a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ra.done:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return ra
}

func (ra *rdAgent) used() map[string]int {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return maps2(ra.addrs)
}

func maps2(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func rdClient(t *testing.T, proxyURL *url.URL) *http.Client {
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func rdGet(c *http.Client, u string) (int, string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

var rdPrefixes atomic.Int64

func rdPrefix() string { return fmt.Sprintf("agent-test-%d-%d:", os.Getpid(), rdPrefixes.Add(1)) }

// Two agents share one pool: no upstream ever carries two requests at
// once, minRequestInterval holds across the agents, and both use every IP.
func TestRedisAgentsShareIPs(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	o := newRDOrigin(t)
	const interval = 50 * time.Millisecond
	c := rdConf{redisURL: srv.URL(0), prefix: rdPrefix(), origin: o.URL, ups: rdUpstreams(t, 3), interval: interval, leaseTTL: 5 * time.Second}
	agents := []*rdAgent{startRDAgent(t, c, nil), startRDAgent(t, c, nil)}

	var wg sync.WaitGroup
	var ok, bad atomic.Int64
	stop := time.Now().Add(1500 * time.Millisecond)
	for _, ra := range agents {
		hc := rdClient(t, ra.url)
		for range 8 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					code, body, err := rdGet(hc, o.URL+"/slow")
					if err != nil || code != 200 {
						bad.Add(1)
						t.Errorf("GET: %d %q %v", code, body, err)
						return
					}
					ok.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.FailNow()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, ov := range o.overlaps {
		t.Errorf("an upstream carried two requests at once: %s", ov)
	}
	for ip, spans := range o.visits {
		slices.SortFunc(spans, func(a, b rdSpan) int { return a.start.Compare(b.start) })
		for i := 1; i < len(spans); i++ {
			if gap := spans[i].start.Sub(spans[i-1].end); gap < interval-time.Millisecond {
				t.Errorf("%s: request %d began %v after the previous one ended, want at least %v", ip, i, gap, interval)
			}
		}
	}
	for i, ra := range agents {
		if used := ra.used(); len(used) != len(c.ups) {
			t.Errorf("agent %d used %v, want all %d IPs", i, used, len(c.ups))
		}
	}
	// Three IPs, each once per interval plus the request: the bound holds
	// with both agents pushing as hard as they can.
	t.Logf("%d requests through %d IPs in 1.5s", ok.Load(), len(c.ups))
	if max := int64(float64(len(c.ups)) * 1.5 / interval.Seconds()); ok.Load() > max+int64(len(c.ups)) {
		t.Errorf("%d requests, more than %d IPs allow at one per %v", ok.Load(), len(c.ups), interval)
	}
}

// rdBinary builds cmd/proxy-hopper into the test's temp dir (the build
// cache makes it a link step after the first time).
func rdBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "proxy-hopper")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "github.com/proxy-hopper/proxy-hopper/cmd/proxy-hopper")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build proxy-hopper: %v\n%s", err, out)
	}
	return bin
}

// kill -9 of an agent holding IPs mid-request: every IP is back within the
// lease TTL, and the other agent serves throughout.
func TestRedisAgentKilled(t *testing.T) {
	t.Parallel()
	bin := rdBinary(t)
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	o := newRDOrigin(t)
	const ttl = time.Second
	c := rdConf{redisURL: srv.URL(0), prefix: rdPrefix(), origin: o.URL, ups: rdUpstreams(t, 3), leaseTTL: ttl}

	// The doomed agent: the real binary.
	c.port = testenv.FreePort(t, "127.0.0.1")
	cmd := exec.Command(bin, "run", "--config", c.write(t))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	doomedAddr := fmt.Sprintf("127.0.0.1:%d", c.port)
	testenv.WaitListening(t, doomedAddr, 10*time.Second)
	doomed := rdClient(t, &url.URL{Scheme: "http", Host: doomedAddr})
	for range 2 {
		go func() { _, _, _ = rdGet(doomed, o.URL+"/block") }()
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := o.blocked.Load(); n < 2 {
			return fmt.Errorf("%d of the doomed agent's 2 requests reached the origin", n) // out is written by the agent process: read it only once it exited
		}
		return nil
	})

	// The survivor serves all along, with the one IP left at first.
	survivor := startRDAgent(t, c, nil)
	hc := rdClient(t, survivor.url)
	var failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if code, body, err := rdGet(hc, o.URL+"/slow"); err != nil || code != 200 {
				failures.Add(1)
				t.Errorf("survivor: %d %q %v", code, body, err)
			}
		}
	})

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_ = cmd.Wait()
	o.unblock() // let tinyproxy finish with the dead agent's requests

	pl := survivor.a.Targets()[0].Pool
	testenv.Eventually(t, ttl+500*time.Millisecond-time.Since(killed), func() error {
		s, err := pl.Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		inUse := 0
		for _, st := range s {
			// The survivor's own request may hold one IP at any moment.
			if st.State == pool.StateInUse {
				inUse++
			}
		}
		if inUse > 1 {
			return fmt.Errorf("%v after kill -9, %d IPs still in use: %v", time.Since(killed), inUse, s)
		}
		return nil
	})
	t.Logf("IPs of the killed agent back in the pool %v after kill -9 (lease TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
	// And the survivor now gets every IP.
	before := survivor.used()
	var burst sync.WaitGroup
	for range 6 {
		burst.Go(func() {
			if code, body, err := rdGet(hc, o.URL+"/slow"); err != nil || code != 200 {
				t.Errorf("survivor: %d %q %v", code, body, err)
			}
		})
	}
	burst.Wait()
	close(stop)
	wg.Wait()
	after := survivor.used()
	for _, up := range c.ups {
		if after[up] == before[up] {
			t.Errorf("after recovery the survivor never used %s: %v", up, after)
		}
	}
	if n := failures.Load(); n > 0 {
		t.Errorf("%d survivor requests failed", n)
	}
}

// logCounter counts log records by message.
type logCounter struct {
	mu   sync.Mutex
	msgs map[string]int
}

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs[r.Message]++
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

func (l *logCounter) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for m, c := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n += c
		}
	}
	return n
}

// redis-server stopped under load: clients get 503 with the JSON body, the
// agent neither crashes nor piles up goroutines and logs the outage once;
// redis-server started again (empty): traffic recovers, same agent.
//
// Not parallel: it counts the process's goroutines, which other tests
// running meanwhile change both ways.
func TestRedisOutageUnderLoad(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	o := newRDOrigin(t)
	c := rdConf{redisURL: srv.URL(0), prefix: rdPrefix(), origin: o.URL, ups: rdUpstreams(t, 2), leaseTTL: time.Second}
	logs := &logCounter{msgs: map[string]int{}}
	ra := startRDAgent(t, c, slog.New(logs))
	hc := rdClient(t, ra.url)

	var ok, unavailable atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := rdGet(hc, o.URL+"/slow")
				switch {
				case err != nil:
					t.Errorf("GET: %v", err)
					return
				case code == 200:
					ok.Add(1)
				case code == 503:
					var doc struct {
						Error  string `json:"error"`
						Target string `json:"target"`
					}
					if err := json.Unmarshal([]byte(body), &doc); err != nil || doc.Error != "backend_unavailable" || doc.Target != "origin" {
						t.Errorf("503 body %q, want error backend_unavailable for target origin", body)
						return
					}
					unavailable.Add(1)
				default:
					t.Errorf("GET: %d %q", code, body)
					return
				}
			}
		})
	}
	// The clients stop before the test ends, also when it fails.
	stopClients := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopClients)
	waitUntil := func(what string, within time.Duration, cond func() bool) {
		t.Helper()
		testenv.Eventually(t, within, func() error {
			if !cond() {
				return fmt.Errorf("%s: ok %d, unavailable %d", what, ok.Load(), unavailable.Load())
			}
			return nil
		})
	}
	waitUntil("traffic flows", 5*time.Second, func() bool { return ok.Load() > 20 })
	base := runtime.NumGoroutine()

	srv.Stop()
	waitUntil("503s while Redis is down", 5*time.Second, func() bool { return unavailable.Load() > 200 })
	mid := runtime.NumGoroutine()
	waitUntil("more 503s", 5*time.Second, func() bool { return unavailable.Load() > 1000 })
	late := runtime.NumGoroutine()
	t.Logf("goroutines: %d under load, %d after 200 and %d after 1000 requests refused", base, mid, late)
	if late > base+20 || late > mid+10 {
		t.Errorf("goroutines pile up while Redis is down: %d, then %d, then %d", base, mid, late)
	}
	select {
	case err := <-ra.done:
		t.Fatalf("agent stopped while Redis was down: %v", err)
	default:
	}

	srv.Start()
	restarted := time.Now()
	okBefore := ok.Load()
	waitUntil("traffic recovers", 10*time.Second, func() bool { return ok.Load() > okBefore+20 })
	t.Logf("traffic back %v after redis-server restarted (empty)", time.Since(restarted).Round(time.Millisecond))
	stopClients()
	if n := logs.count("redis unavailable"); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	if n := logs.count("redis available again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	if n := logs.count("redis had lost the pool"); n != 1 {
		t.Errorf("restore logged %d times, want once", n)
	}
}

// The redis keys: defaults, environment variables, validation.
func TestRedisConfig(t *testing.T) {
	write := func(server string) string {
		p := filepath.Join(t.TempDir(), "c.yaml")
		body := "server:\n" + server + "targets:\n  - {name: t, regex: '.*', ipList: ['10.0.0.1:3128']}\n"
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := config.Load(write("  backend: redis\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Server; s.RedisKeyPrefix != "ph:" || s.RedisLeaseTTL.D() != 30*time.Second {
		t.Errorf("defaults: prefix %q, lease TTL %v", s.RedisKeyPrefix, s.RedisLeaseTTL.D())
	}

	t.Setenv("PROXY_HOPPER_REDIS_KEY_PREFIX", "staging:")
	t.Setenv("PROXY_HOPPER_REDIS_LEASE_TTL", "45s")
	cfg, err = config.Load(write("  backend: redis\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Server; s.RedisKeyPrefix != "staging:" || s.RedisLeaseTTL.D() != 45*time.Second {
		t.Errorf("from the environment: prefix %q, lease TTL %v", s.RedisKeyPrefix, s.RedisLeaseTTL.D())
	}

	cfg, err = config.Load(write("  backend: redis\n  redisKeyPrefix: 'a{b}'\n  redisLeaseTtl: 500ms\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Resolve()
	for _, want := range []string{
		`server: redisKeyPrefix: "a{b}" must not contain '{' or '}'`,
		"server: redisLeaseTtl must be at least 1s, got 500ms",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Resolve: %v\nwant a problem %q", err, want)
		}
	}
	// The memory backend ignores them.
	cfg, err = config.Load(write("  backend: memory\n  redisLeaseTtl: 500ms\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resolve(); err != nil {
		t.Errorf("memory backend: %v", err)
	}
}

// TestRedisRuntimeSurvivesKill9: a GraphQL change and an admin IP edit
// made through the real binary are in Redis: kill -9 the agent, start the
// binary again, and it serves both.
func TestRedisRuntimeSurvivesKill9(t *testing.T) {
	t.Parallel()
	bin := rdBinary(t)
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ups := rdUpstreams(t, 2)
	const token = "kill9-admin-token-0123456789"
	port, adminPort := testenv.FreePort(t, "127.0.0.1"), testenv.FreePort(t, "127.0.0.1")
	cfg := filepath.Join(t.TempDir(), "proxy-hopper.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  backend: redis
  redisUrl: %q
  redisKeyPrefix: %q
  probe: false
  shutdownTimeout: 2s
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
  adminToken: %s
proxyProviders:
  - {name: lab, static: false, ipList: [%q]}
ipPools:
  - {name: pool, static: false, ipRequests: [{provider: lab, count: 10}]}
targets:
  - {name: web, regex: 'x\.example', ipPool: pool}
`, port, srv.URL(0), rdPrefix(), adminPort, token, ups[0])), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, admin+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "run", "--config", cfg)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		testenv.WaitListening(t, fmt.Sprintf("127.0.0.1:%d", adminPort), 10*time.Second)
		return cmd
	}
	first := start()
	if code, body := call("POST", "/graphql", `{"query": "mutation { addIpToProvider(provider: \"lab\", address: \"`+ups[1]+`\") { ipList } }"}`); code != 200 || strings.Contains(body, "errors") {
		t.Fatalf("addIpToProvider: %d %s", code, body)
	}
	if code, body := call("POST", "/api/targets/web/ips", `{"address": "127.0.0.9:3128"}`); code != 201 {
		t.Fatalf("add IP: %d %s", code, body)
	}
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()

	start()
	code, body := call("GET", "/api/targets/web", "")
	for _, want := range []string{ups[0], ups[1], "127.0.0.9:3128"} {
		if code != 200 || !strings.Contains(body, `"address": "`+want+`"`) {
			t.Errorf("after kill -9 and a restart, web lacks %s: %d %.400s", want, code, body)
		}
	}
}
