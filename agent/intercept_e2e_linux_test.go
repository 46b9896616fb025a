package agent_test

// End-to-end tests of TLS interception (docs/interception.md): curl, with
// the agent's CA (written by `proxy-hopper ca init`) as its only trust,
// sends several HTTPS requests on one keep-alive connection, through an
// explicit CONNECT and, with no proxy settings at all, from a cgroup the
// agent's local transparent mode redirects; over HTTP/1.1 and HTTP/2. The
// HTTPS origin has a test CA only the agent trusts (targets[].caFile), and
// sees which upstream carried each request from its source address (each
// tinyproxy binds its outgoing connections to its own address).

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// icptOrigin is the HTTPS origin of the interception tests. It answers
// "from=<source ip> cookie=<sid values> path=<path>". A request without a
// sid cookie is given one naming its source IP; a sid arriving through
// another IP than the one it was given to is recorded as crossed. A path
// under /429/ is answered 429 the first time, 200 after.
type icptOrigin struct {
	mu      sync.Mutex
	issued  int
	limited map[string]string // /429/ path -> the IP its 429 went through
	crossed []string
}

func newIcptOrigin() *icptOrigin { return &icptOrigin{limited: map[string]string{}} }

func (o *icptOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from, _, _ := net.SplitHostPort(r.RemoteAddr)
	o.mu.Lock()
	defer o.mu.Unlock()
	if strings.HasPrefix(r.URL.Path, "/429/") && o.limited[r.URL.Path] == "" {
		o.limited[r.URL.Path] = from
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	var sids []string
	for _, c := range r.Cookies() {
		if c.Name != "sid" {
			continue
		}
		sids = append(sids, c.Value)
		if owner, _, _ := strings.Cut(c.Value, "_"); owner != from {
			o.crossed = append(o.crossed, fmt.Sprintf("%s got through %s (%s)", c.Value, from, r.URL.Path))
		}
	}
	if len(sids) == 0 {
		o.issued++
		http.SetCookie(w, &http.Cookie{Name: "sid", Value: fmt.Sprintf("%s_%d", from, o.issued), Path: "/"})
		sids = []string{"-"}
	}
	fmt.Fprintf(w, "from=%s cookie=%s path=%s\n", from, strings.Join(sids, ","), r.URL.Path)
}

func (o *icptOrigin) limitedBy(path string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.limited[path]
}

func (o *icptOrigin) crossings() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.crossed)
}

// serve serves o over TLS with cert on each listener until the test ends.
func (o *icptOrigin) serve(t *testing.T, cert tls.Certificate, lns ...net.Listener) {
	srv := &http.Server{Handler: o, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	for _, ln := range lns {
		go srv.ServeTLS(ln, "", "")
	}
	t.Cleanup(func() { srv.Close() })
}

// caInit writes the interception CA with the agent binary's `ca init`.
func caInit(t *testing.T, bin, dir string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if out, err := exec.Command(bin, "ca", "init", "--cert", certFile, "--key", keyFile).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("ca init key: %v %v, want mode 0600", st, err)
	}
	return certFile, keyFile
}

// noKeyIn fails t if what (a log, a scrape) holds any of the CA key
// file's PEM lines.
func noKeyIn(t *testing.T, keyFile, name, what string) {
	t.Helper()
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(what, "PRIVATE KEY") {
		t.Errorf("the %s holds a private key", name)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) >= 16 && !strings.HasPrefix(l, "-----") && strings.Contains(what, l) {
			t.Errorf("the %s holds a line of the CA key", name)
		}
	}
}

// icptCurlFormat follows each response curl prints.
const icptCurlFormat = "connects=%{num_connects} http=%{http_version} code=%{response_code}\n"

// icptHit is one transfer of a curl run: what the origin said, and curl.
type icptHit struct {
	from, cookie, path string
	connects, code     int
	http               string
}

func parseHits(t *testing.T, out string) []icptHit {
	t.Helper()
	var hits []icptHit
	var cur icptHit
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "from="):
			if _, err := fmt.Sscanf(l, "from=%s cookie=%s path=%s", &cur.from, &cur.cookie, &cur.path); err != nil {
				t.Fatalf("origin line %q: %v", l, err)
			}
		case strings.HasPrefix(l, "connects="):
			if _, err := fmt.Sscanf(l, "connects=%d http=%s code=%d", &cur.connects, &cur.http, &cur.code); err != nil {
				t.Fatalf("curl line %q: %v", l, err)
			}
			hits = append(hits, cur)
			cur = icptHit{}
		}
	}
	return hits
}

// icptPaths are the URL paths of one keep-alive run named run: two rounds
// over the three upstreams, then a request the origin answers 429 once.
func icptPaths(run string) []string {
	var p []string
	for i := 1; i <= 6; i++ {
		p = append(p, fmt.Sprintf("/%s/r%d", run, i))
	}
	return append(p, "/429/"+run)
}

// checkKeepAliveRun checks the transfers of one curl run of icptPaths(run)
// on one connection, over HTTP version httpVer ("1.1" or "2"): every
// request through an upstream of ups, one after another through different
// ones (the first three all different); the identity cookies of the
// second round each the one its IP was given; the 429 retried through
// another IP.
func checkKeepAliveRun(t *testing.T, out, run, httpVer string, ups []string, o *icptOrigin) {
	t.Helper()
	hits := parseHits(t, out)
	paths := icptPaths(run)
	if len(hits) != len(paths) {
		t.Fatalf("curl made %d transfers, want %d:\n%s", len(hits), len(paths), out)
	}
	for i, h := range hits {
		if h.code != 200 || h.path != paths[i] || !slices.Contains(ups, h.from) {
			t.Errorf("transfer %d: %+v, want 200 for %s through one of %v", i, h, paths[i], ups)
		}
		if h.http != httpVer {
			t.Errorf("transfer %d over HTTP/%s, want HTTP/%s", i, h.http, httpVer)
		}
		want := 0 // the first connects, the others reuse its connection
		if i == 0 {
			want = 1
		}
		if h.connects != want {
			t.Errorf("transfer %d: %d new connections, want %d (one keep-alive connection)\n%s", i, h.connects, want, out)
		}
	}
	var froms []string
	for _, h := range hits[:6] {
		froms = append(froms, h.from)
	}
	if a, b, c := froms[0], froms[1], froms[2]; a == b || b == c || a == c {
		t.Errorf("the first three requests went through %v, want three different upstreams", froms[:3])
	}
	for i := 1; i < 6; i++ {
		if froms[i] == froms[i-1] {
			t.Errorf("requests %d and %d both went through %s (%v)", i, i+1, froms[i], froms)
		}
	}
	for i, h := range hits[:6] {
		if owner, _, _ := strings.Cut(h.cookie, "_"); h.cookie != "-" && owner != h.from {
			t.Errorf("request %d through %s carried cookie %s", i+1, h.from, h.cookie)
		}
		if i >= 3 && (strings.Contains(h.cookie, ",") || !strings.HasPrefix(h.cookie, h.from+"_")) {
			t.Errorf("request %d through %s carried cookie %q, want the one this IP was given (identity jar)", i+1, h.from, h.cookie)
		}
	}
	limited := o.limitedBy(paths[6])
	if limited == "" || !slices.Contains(ups, limited) {
		t.Errorf("the origin's 429 went through %q, want an upstream", limited)
	}
	if last := hits[6]; last.from == limited {
		t.Errorf("the 429 from %s was retried through the same IP", limited)
	}
	if c := o.crossings(); len(c) > 0 {
		t.Errorf("cookies sent through another IP than their own: %v", c)
	}
}

// curlExit is curl's exit code from err (0: it succeeded).
func curlExit(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		t.Fatalf("curl: %v", err)
	}
	return ee.ExitCode()
}

// metricIs checks the counter sample of name with labels in text.
func metricIs(t *testing.T, text, name string, labels map[string]string, want float64) {
	t.Helper()
	got, l := bpfMetric(t, text, name, labels)
	if l == nil && want != 0 {
		t.Errorf("no %s %v sample", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s %v = %v, want %v", name, labels, got, want)
	}
}

// icptTarget is the intercepting target of both tests: identity cookies
// per IP (no warm-up, so the origin sees exactly the client's requests),
// two retries.
// icptCounts are the interception series a test expects of target shop
// after its run (one failed handshake, a client rejecting the leaf; every
// 429 retried once and rotating the IP's identity).
type icptCounts struct {
	intercepted, failed, bypassed float64 // connections by handling (none tunnelled)
	h1, h2                        float64 // intercepted connections by protocol
	misses, hits, minted          float64 // the leaf cache
	limited                       float64 // 429 attempts
}

func checkIcptMetrics(t *testing.T, text, mode string, c icptCounts) {
	t.Helper()
	conns := func(handling string, want float64) {
		t.Helper()
		metricIs(t, text, "proxy_hopper_tls_connections_total", map[string]string{"target": "shop", "mode": mode, "handling": handling}, want)
	}
	conns("intercepted", c.intercepted)
	conns("failed", c.failed)
	conns("bypassed", c.bypassed)
	conns("tunnelled", 0)
	metricIs(t, text, "proxy_hopper_tls_handshake_failures_total", map[string]string{"reason": "client_rejected_certificate"}, c.failed)
	metricIs(t, text, "proxy_hopper_tls_intercepted_protocol_total", map[string]string{"proto": "http/1.1"}, c.h1)
	metricIs(t, text, "proxy_hopper_tls_intercepted_protocol_total", map[string]string{"proto": "h2"}, c.h2)
	metricIs(t, text, "proxy_hopper_intercept_certificate_lookups_total", map[string]string{"result": "miss"}, c.misses)
	metricIs(t, text, "proxy_hopper_intercept_certificate_lookups_total", map[string]string{"result": "hit"}, c.hits)
	metricIs(t, text, "proxy_hopper_intercept_certificates_minted_total", nil, c.minted)
	metricIs(t, text, "proxy_hopper_requests_total", map[string]string{"target": "shop", "outcome": "rate_limited"}, c.limited)
	metricIs(t, text, "proxy_hopper_retries_total", map[string]string{"target": "shop"}, c.limited)
	metricIs(t, text, "proxy_hopper_identity_rotations_total", map[string]string{"target": "shop", "reason": "429"}, c.limited)
}

func icptTarget(regex, caFile string, ups []string) string {
	return fmt.Sprintf(`  - name: shop
    regex: '%s'
    ipList: ["%s"]
    caFile: %q
    tlsIntercept: true
    minRequestInterval: 0s
    maxQueueWait: 5s
    numRetries: 2
    ipFailuresUntilQuarantine: 100
    identity: {enabled: true, warmup: {enabled: false}}
`, regex, strings.Join(ups, `", "`), caFile)
}

// TestInterceptExplicitConnect: curl through the agent as its proxy
// (CONNECT), trusting the agent's CA only.
func TestInterceptExplicitConnect(t *testing.T) {
	t.Parallel()
	curl := testenv.LookPath(t, "curl")
	dir := t.TempDir()
	caCert, caKey := caInit(t, buildAgent(t, dir), dir)

	const bypassIP = "127.0.0.20" // on the bypass list
	cert, originCA := testCertFor(t, []string{"origin.test"}, []string{"127.0.0.1", bypassIP})
	originCAFile := filepath.Join(dir, "origin-ca.pem")
	if err := os.WriteFile(originCAFile, originCA, 0o644); err != nil {
		t.Fatal(err)
	}
	o := newIcptOrigin()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bln, err := net.Listen("tcp", net.JoinHostPort(bypassIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	o.serve(t, cert, ln, bln)
	origin, bypassed := "https://"+ln.Addr().String(), "https://"+bln.Addr().String()

	ups := rdUpstreams(t, 3)
	var upIPs []string
	for _, u := range ups {
		upIPs = append(upIPs, hostOf(u))
	}
	server, mport := rlServer(t, "")
	// A CONNECT is matched on host:port, the requests inside on their URL.
	cfg := "server:\n" + server + fmt.Sprintf(`interception:
  caCert: %q
  caKey: %q
  bypassDomains: [pinned.example, %q]
targets:
`, caCert, caKey, bypassIP) + icptTarget(`^(https://)?127\.0\.0\.(1|20):\d+(/|$)`, originCAFile, ups)
	ra := &rlAgent{t: t, server: server, logs: &syncBuf{}, metricsPort: mport, path: filepath.Join(dir, "config.yaml")}
	if err := os.WriteFile(ra.path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ra.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", ra.logs.String())
		}
	})

	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "20", "-x", ra.proxyURL.String()}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return string(out), err
	}
	keepAlive := func(t *testing.T, run1, flag, httpVer string) {
		args := []string{"--cacert", caCert, flag, "-w", icptCurlFormat}
		for _, p := range icptPaths(run1) {
			args = append(args, origin+p)
		}
		out, err := run(args...)
		if err != nil {
			t.Fatalf("curl: %v\n%s", err, out)
		}
		checkKeepAliveRun(t, out, run1, httpVer, upIPs, o)
	}
	t.Run("HTTP1KeepAlive", func(t *testing.T) { keepAlive(t, "h1", "--http1.1", "1.1") })
	t.Run("HTTP2KeepAlive", func(t *testing.T) { keepAlive(t, "h2", "--http2", "2") })
	t.Run("OriginCAOnlyRejected", func(t *testing.T) {
		// The client sees the agent's leaf, not the origin's certificate.
		out, err := run("--cacert", originCAFile, origin+"/origin-ca")
		if code := curlExit(t, err); code != 60 {
			t.Errorf("curl trusting the origin's CA only: exit %d (%v), want 60 (certificate rejected)\n%s", code, err, out)
		}
	})
	t.Run("BypassTunnels", func(t *testing.T) {
		out, err := run("--cacert", originCAFile, bypassed+"/bypass")
		if err != nil {
			t.Fatalf("curl to a bypassed IP trusting the origin's CA: %v\n%s", err, out)
		}
		if f := fromOf(out); len(f) != 1 || !slices.Contains(upIPs, f[0]) {
			t.Errorf("bypassed request: %q, want it through an upstream", out)
		}
		out, err = run("--cacert", caCert, bypassed+"/bypass-agent-ca")
		if code := curlExit(t, err); code != 60 {
			t.Errorf("curl to a bypassed IP trusting the agent's CA only: exit %d (%v), want 60\n%s", code, err, out)
		}
	})

	text := ra.scrape()
	// One leaf for 127.0.0.1, signed once and then found in the cache.
	checkIcptMetrics(t, text, "connect", icptCounts{intercepted: 2, failed: 1, bypassed: 2, h1: 1, h2: 1, misses: 1, hits: 2, minted: 1, limited: 2})
	noKeyIn(t, caKey, "metrics", text)
	noKeyIn(t, caKey, "agent log", ra.logs.String())

	// tlsIntercept reloads with its target: off, the same host tunnels
	// (the client sees the origin's certificate); on again, intercepted.
	t.Run("ReloadTogglesInterception", func(t *testing.T) {
		reload := func(cfg string) {
			t.Helper()
			if err := os.WriteFile(ra.path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := ra.a.ReloadFile(context.Background()); err != nil {
				t.Fatalf("reload: %v", err)
			}
		}
		reload(strings.Replace(cfg, "tlsIntercept: true", "tlsIntercept: false", 1))
		if out, err := run("--cacert", originCAFile, origin+"/after-off"); err != nil {
			t.Fatalf("tlsIntercept off: curl trusting the origin's CA: %v\n%s", err, out)
		}
		if out, err := run("--cacert", caCert, origin+"/after-off-agent-ca"); curlExit(t, err) != 60 {
			t.Fatalf("tlsIntercept off: the agent's leaf was shown (%v)\n%s", err, out)
		}
		reload(cfg)
		if out, err := run("--cacert", caCert, origin+"/after-on"); err != nil {
			t.Fatalf("tlsIntercept on again: %v\n%s", err, out)
		}
		text := ra.scrape()
		conns := func(handling string, want float64) {
			t.Helper()
			metricIs(t, text, "proxy_hopper_tls_connections_total", map[string]string{"target": "shop", "mode": "connect", "handling": handling}, want)
		}
		conns("tunnelled", 2)
		conns("intercepted", 3)
	})
}

const (
	icptUp3      = "198.18.0.4"  // a third upstream in the transparent test's netns
	icptBypassIP = "198.18.0.13" // the origin on the bypass list
	icptPort     = "8443"
)

// TestInterceptTransparentLocal: curl with no proxy settings, in a cgroup
// the agent's local transparent mode redirects, trusting the agent's CA
// only; to the origin's IP (no SNI) and to its name (SNI, --resolve).
func TestInterceptTransparentLocal(t *testing.T) {
	start := time.Now()
	e := newE2EEnv(t)
	e.ns.AddAddrs(t, icptUp3+"/32", icptBypassIP+"/32")
	e.ups = append(e.ups, testenv.StartTinyproxy(t, icptUp3, testenv.TinyproxyOptions{
		Netns: e.ns, Hosts: originIP + " origin.test\n", Extra: "Bind " + icptUp3 + "\n",
	}))
	ups := []string{up1, up2, icptUp3}
	caCert, caKey := caInit(t, e.bin, e.dir)
	cert, originCA := testCertFor(t, []string{"origin.test"}, []string{originIP, icptBypassIP})
	originCAFile := filepath.Join(e.dir, "origin-ca.pem")
	if err := os.WriteFile(originCAFile, originCA, 0o644); err != nil {
		t.Fatal(err)
	}
	o := newIcptOrigin()
	o.serve(t, cert, e.ns.Listen(t, originIP+":"+icptPort), e.ns.Listen(t, icptBypassIP+":"+icptPort))

	e.agentProcesses++
	port := 18080 + e.agentProcesses
	metricsPort := port + 1000
	var ipList []string
	for _, u := range ups {
		ipList = append(ipList, u+":8888")
	}
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  logLevel: DEBUG
  probe: false
  metrics: true
  metricsPort: %d
  shutdownTimeout: 2s
interception:
  caCert: %q
  caKey: %q
  bypassDomains: [%q]
targets:
%stransparent:
  unmatched: direct
  local:
    enabled: true
    cgroups: [%q]
    ports: [%s]
    pinDir: %s
`, port, metricsPort, caCert, caKey, icptBypassIP,
		icptTarget(`^(https://)?(origin\.test|198\.18\.0\.1[03]):`+icptPort+`(/|$)`, originCAFile, ipList),
		e.clientCg, icptPort, e.pinDir)
	a := e.launch(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(a.log)
			t.Logf("agent log:\n%s", b)
		}
	})
	t.Logf("setup %s", time.Since(start))

	byIP := "https://" + originIP + ":" + icptPort
	byName := "https://origin.test:" + icptPort
	resolve := "origin.test:" + icptPort + ":" + originIP
	for _, tc := range []struct {
		name, run, flag, httpVer, base string
	}{
		{"HTTP1ByIP", "h1ip", "--http1.1", "1.1", byIP},
		{"HTTP1ByName", "h1name", "--http1.1", "1.1", byName},
		{"HTTP2ByIP", "h2ip", "--http2", "2", byIP},
		{"HTTP2ByName", "h2name", "--http2", "2", byName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--cacert", caCert, "--resolve", resolve, tc.flag, "-w", icptCurlFormat}
			for _, p := range icptPaths(tc.run) {
				args = append(args, tc.base+p)
			}
			checkKeepAliveRun(t, e.curl(t, true, args...), tc.run, tc.httpVer, ups, o)
		})
	}
	try := func(args ...string) (string, int) {
		out, err := e.try(true, nil, "curl", append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, args...)...)
		return out, curlExit(t, err)
	}
	t.Run("OriginCAOnlyRejected", func(t *testing.T) {
		if out, code := try("--cacert", originCAFile, byIP+"/origin-ca"); code != 60 {
			t.Errorf("curl trusting the origin's CA only: exit %d, want 60 (certificate rejected)\n%s", code, out)
		}
	})
	t.Run("BypassTunnels", func(t *testing.T) {
		bypassed := "https://" + icptBypassIP + ":" + icptPort
		out, code := try("--cacert", originCAFile, bypassed+"/bypass")
		if f := fromOf(out); code != 0 || len(f) != 1 || !slices.Contains(ups, f[0]) {
			t.Errorf("bypassed request: exit %d %q, want it through an upstream", code, out)
		}
		if out, code := try("--cacert", caCert, bypassed+"/bypass-agent-ca"); code != 60 {
			t.Errorf("curl to a bypassed IP trusting the agent's CA only: exit %d, want 60\n%s", code, out)
		}
	})

	text := e.run(t, false, nil, "curl", "-sS", "--max-time", "5", "--noproxy", "", fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	// Two leaves (the IP's and origin.test's), each signed once.
	checkIcptMetrics(t, text, "transparent", icptCounts{intercepted: 4, failed: 1, bypassed: 2, h1: 2, h2: 2, misses: 2, hits: 3, minted: 2, limited: 4})
	noKeyIn(t, caKey, "metrics", text)
	if b, err := os.ReadFile(a.log); err != nil {
		t.Fatal(err)
	} else {
		noKeyIn(t, caKey, "agent log (DEBUG)", string(b))
	}
	t.Logf("total %s", time.Since(start))
}
