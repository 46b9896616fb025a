package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
)

// env is an agent under test with its upstreams.
type env struct {
	srv      *Server
	addr     string
	backend  *memory.Backend
	targets  []*Target
	upstream []*testenv.Tinyproxy
	attempts chan AttemptEvent
	mu       sync.Mutex
	events   []AttemptEvent
	reqs     []RequestEvent
	accepted atomic.Int64      // client connections the agent accepted
	clients  []*http.Transport // closed before the agent shuts down
	served   chan error        // Serve's result
}

type envOptions struct {
	upstreams  int // tinyproxies on 127.0.0.2, .3, ...
	extraAddrs []string
	regex      string
	cfg        pool.Config
	retries    int
	// maxClientRetries is the target's MaxClientRetries.
	maxClientRetries int
	tls              *tls.Config
	opts             Options
	leading          []string                 // addresses placed before the tinyproxies in the pool
	tinyproxy        testenv.TinyproxyOptions // for every tinyproxy upstream
	quiet            bool                     // no agent log in the test output
	creds            []string                 // "user:pass" the agent sends to tinyproxy i
	identity         *identity.Store          // per-IP identities of the target
	spoofUA          bool                     // the target's SpoofUserAgent
	poolHooks        pool.Hooks
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{backend: memory.New(nil)}
	addrs := append([]string(nil), o.leading...)
	ups := map[string]Upstream{}
	for _, a := range o.leading {
		ups[a] = Upstream{Addr: a}
	}
	for i := 0; i < o.upstreams; i++ {
		tp := testenv.StartTinyproxy(t, fmt.Sprintf("127.0.0.%d", i+2), o.tinyproxy)
		e.upstream = append(e.upstream, tp)
		addrs = append(addrs, tp.Addr)
		up := Upstream{Addr: tp.Addr}
		if i < len(o.creds) {
			up.Username, up.Password, _ = strings.Cut(o.creds[i], ":")
		}
		ups[tp.Addr] = up
	}
	for _, a := range o.extraAddrs {
		addrs = append(addrs, a)
		ups[a] = Upstream{Addr: a}
	}
	if o.cfg.FailuresUntilQuarantine == 0 {
		o.cfg.FailuresUntilQuarantine = 3
	}
	if o.cfg.MaxQueueWait == 0 {
		o.cfg.MaxQueueWait = 5 * time.Second
	}
	if o.cfg.QuarantineTime == 0 {
		o.cfg.QuarantineTime = time.Minute
	}
	if o.opts.Logger == nil {
		var w io.Writer = testWriter{t}
		if o.quiet {
			w = io.Discard
		}
		o.opts.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := pool.New(context.Background(), "t1", addrs, e.backend, o.cfg, pool.Options{Logger: o.opts.Logger, Hooks: o.poolHooks})
	if err != nil {
		t.Fatal(err)
	}
	if o.regex == "" {
		o.regex = ".*"
	}
	tg := &Target{Name: "t1", Regex: regexp.MustCompile(o.regex), Pool: p, Upstreams: ups, NumRetries: o.retries, MaxClientRetries: o.maxClientRetries, TLS: o.tls, Identity: o.identity, SpoofUserAgent: o.spoofUA}
	e.targets = []*Target{tg}
	o.opts.Hooks.Attempt = func(a AttemptEvent) {
		e.mu.Lock()
		e.events = append(e.events, a)
		e.mu.Unlock()
	}
	if o.opts.Hooks.Request == nil {
		o.opts.Hooks.Request = func(r RequestEvent) {
			e.mu.Lock()
			e.reqs = append(e.reqs, r)
			e.mu.Unlock()
		}
	}
	e.srv = New(e.targets, o.opts)
	l, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	e.served = make(chan error, 1)
	go func() { e.served <- e.srv.Serve(countingListener{l, &e.accepted}) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.mu.Lock()
		for _, tr := range e.clients {
			tr.CloseIdleConnections()
		}
		e.mu.Unlock()
		e.backend.Close()
		e.srv.Shutdown(ctx)
		p.Close()
	})
	return e
}

func (e *env) attemptLog() []AttemptEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]AttemptEvent(nil), e.events...)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// headerClient sends header-mode requests to the agent.
func (e *env) headerGet(t *testing.T, target, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+e.addr+path, nil)
	req.Header.Set(HeaderTarget, target)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func (e *env) proxyClient() *http.Client {
	u, _ := url.Parse("http://" + e.addr)
	tr := &http.Transport{Proxy: http.ProxyURL(u)}
	e.mu.Lock()
	e.clients = append(e.clients, tr)
	e.mu.Unlock()
	return &http.Client{Transport: tr}
}

// headerClient returns a client for header-mode requests to the agent (send
// them to e.url(path) with the target header). Its connections are closed
// before the agent shuts down.
func (e *env) headerClient() *http.Client {
	tr := &http.Transport{}
	e.mu.Lock()
	e.clients = append(e.clients, tr)
	e.mu.Unlock()
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// url returns the agent's URL for an origin-form path.
func (e *env) url(path string) string { return "http://" + e.addr + path }

func (e *env) requestLog() []RequestEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]RequestEvent(nil), e.reqs...)
}

func (e *env) pool() *pool.Pool { return e.targets[0].Pool }

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// deadAddr returns an ip:port on 127.0.0.9 where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.9", fmt.Sprint(testenv.FreePort(t, "127.0.0.9")))
}

// errorDoc is the agent's JSON error body.
type errorDoc struct {
	Error    string          `json:"error"`
	Detail   string          `json:"detail"`
	URL      string          `json:"url"`
	Method   string          `json:"method"`
	Target   string          `json:"target"`
	Attempts []attemptRecord `json:"attempts"`
	Tried    *int            `json:"retries_attempted"`
	Allowed  *int            `json:"retries_allowed"`
}

// decodeError parses a JSON error body, failing t when it is not one.
func decodeError(t *testing.T, resp *http.Response, body string) errorDoc {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error response Content-Type %q, want application/json", ct)
	}
	var d errorDoc
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("error body is not JSON: %v: %q", err, body)
	}
	if d.Error == "" {
		t.Errorf("error body has no \"error\": %q", body)
	}
	return d
}

// do sends req with c and returns the response with its body read.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read body of %s %s: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

// writeCA writes the origin's certificate as PEM for curl --cacert.
func writeCA(t *testing.T, o *origin) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// readRawResponse reads one response from a raw connection.
func readRawResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return resp, string(b)
}

// origin records the requests it serves.
type origin struct {
	*httptest.Server
	mu   sync.Mutex
	seen []*http.Request
}

func newOrigin(t *testing.T, tlsOn bool, h http.HandlerFunc) *origin {
	o := &origin{}
	wrapped := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.seen = append(o.seen, r.Clone(context.Background()))
		o.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
	})
	if tlsOn {
		o.Server = httptest.NewTLSServer(wrapped)
	} else {
		o.Server = httptest.NewServer(wrapped)
	}
	t.Cleanup(o.Close)
	return o
}

func (o *origin) requests() []*http.Request {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*http.Request(nil), o.seen...)
}

// caOf returns a TLS config trusting the httptest server's certificate.
func caOf(o *origin) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(o.Certificate())
	return &tls.Config{RootCAs: pool}
}

// rawRequest writes raw bytes to the agent and returns what it answers
// before closing (or within 3s).
func rawRequest(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

func statusLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// newReq builds a header-mode request to the agent for target + path.
func (e *env) newReq(t *testing.T, method, target, path string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, e.url(path), body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(HeaderTarget, target)
	return req
}

// tcpOrigin serves raw TCP connections on 127.0.0.1 with h, one goroutine
// per connection, and returns its address.
func tcpOrigin(t *testing.T, h func(c *net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				h(c.(*net.TCPConn))
			}()
		}
	}()
	return l.Addr().String()
}

// dialConnect opens a CONNECT tunnel to authority through the agent and
// returns the connection once the agent answered 200.
func (e *env) dialConnect(t *testing.T, authority string, extra ...string) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	head := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n"
	for _, h := range extra {
		head += h + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("CONNECT %s: %s %s", authority, resp.Status, b)
	}
	return c.(*net.TCPConn), br
}

// halfCloseUpstream is a minimal CONNECT-only upstream proxy on ip that,
// unlike tinyproxy 1.11 (which closes both sides when either sends EOF),
// relays a half-close. It stands in for upstreams that do.
func halfCloseUpstream(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	serve := func(c *net.TCPConn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.Method != http.MethodConnect {
			io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
			return
		}
		oc, err := net.DialTimeout("tcp", req.Host, 5*time.Second)
		if err != nil {
			io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
			return
		}
		defer oc.Close()
		_ = oc.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		var relay sync.WaitGroup
		relay.Add(2)
		go func() { defer relay.Done(); io.Copy(oc, br); oc.(*net.TCPConn).CloseWrite() }()
		go func() { defer relay.Done(); io.Copy(c, oc); c.CloseWrite() }()
		relay.Wait()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serve(c.(*net.TCPConn)) }()
		}
	}()
	return l.Addr().String()
}

// attemptsN waits until at least n attempts were reported (the hook runs
// after the response went out) and returns them.
func (e *env) attemptsN(t *testing.T, n int) []AttemptEvent {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(e.attemptLog()) < n {
			return fmt.Errorf("still waiting for %d attempt events", n)
		}
		return nil
	})
	return e.attemptLog()
}

// requestsN waits until at least n requests were reported and returns them.
func (e *env) requestsN(t *testing.T, n int) []RequestEvent {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(e.requestLog()) < n {
			return fmt.Errorf("still waiting for %d request events", n)
		}
		return nil
	})
	return e.requestLog()
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
