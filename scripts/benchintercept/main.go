// Command benchintercept measures TLS interception (issue #18) in one run
// and prints a Markdown report (BENCHMARKS.md takes it verbatim).
//
//	go run ./scripts/benchintercept -bin bin/proxy-hopper [-rounds 3 -duration 3s -conns 16,64]
//
// Everything runs in a private network namespace with only loopback up
// (benchutil.Isolate): an HTTPS origin (Go net/http, HTTP/1.1 and h2, a
// certificate from a test CA made in memory, 100-byte responses) listening
// on every loopback address, upstream forward proxies (internal/miniproxy),
// the agent binary and mitmdump (Debian's mitmproxy). A load client in this
// process keeps N TLS connections open through an HTTP CONNECT proxy and
// sends one small GET after another on each, for a fixed time:
//
//   - tunnel: through the agent, a target that tunnels (baseline);
//   - intercept: through the agent, a target with tlsIntercept (the agent
//     terminates TLS with a leaf of its CA and sends each request on);
//   - mitmproxy: mitmdump in upstream mode through one of the same
//     upstream proxies, intercepting the same way.
//
// Each for HTTP/1.1 and h2 clients. Rounds alternate the rows, so machine
// noise hits them all; the report gives medians and ratios. It also
// measures new TLS connections per second through the intercepting agent
// with a warm certificate cache (one name) and a cold one (a new name for
// every connection).
package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"math/bits"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
)

func main() {
	if err := benchutil.Isolate(); err != nil {
		fmt.Fprintln(os.Stderr, "benchintercept:", err)
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchintercept:", err)
		os.Exit(1)
	}
}

const (
	hostIntercept = "127.0.0.2" // host A: the intercepting target's regex
	hostTunnel    = "127.0.0.3" // host B: the tunnelling target's regex
	bodySize      = 100
	// poolIPs is the number of entries in the targets' ipList: a pool IP
	// carries one request or one tunnel at a time, so a tunnelled
	// connection holds one for its life and 64 connections need 64.
	poolIPs = 64
)

type options struct {
	bin       string
	mitmdump  string
	rounds    int
	dur       time.Duration
	hsDur     time.Duration
	conns     []int
	upstreams int
	intercept bool
	hsWorkers int
	only      string
}

func run() error {
	var o options
	var connsFlag string
	flag.StringVar(&o.bin, "bin", "bin/proxy-hopper", "agent binary")
	flag.StringVar(&o.mitmdump, "mitmdump", "mitmdump", "mitmdump binary (Debian: apt-get install mitmproxy); empty: no mitmproxy rows")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per measurement (alternating the rows)")
	flag.DurationVar(&o.dur, "duration", 3*time.Second, "duration of one keep-alive load run")
	flag.DurationVar(&o.hsDur, "handshake-duration", 3*time.Second, "duration of one handshake run")
	flag.StringVar(&connsFlag, "conns", "16,64", "keep-alive connections, comma-separated")
	flag.IntVar(&o.upstreams, "upstreams", 4, "upstream proxies (internal/miniproxy) behind the pool's IPs")
	flag.BoolVar(&o.intercept, "intercept", true, "configure the intercepting target (false: only the tunnel and mitmproxy rows)")
	flag.IntVar(&o.hsWorkers, "handshake-workers", 8, "concurrent clients of the handshake runs")
	flag.StringVar(&o.only, "only", "", "only the rows whose name contains this (e.g. 'intercepted by agent, h2', to profile the agent); no handshake runs")
	flag.Parse()
	for _, f := range strings.Split(connsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > poolIPs {
			return fmt.Errorf("parse -conns %q: want numbers 1..%d", connsFlag, poolIPs)
		}
		o.conns = append(o.conns, n)
	}
	if o.rounds < 1 || o.dur <= 0 || o.hsDur <= 0 || o.upstreams < 1 || o.upstreams > poolIPs || o.hsWorkers < 1 {
		return errors.New("parse flags: -rounds, -duration, -handshake-duration, -upstreams (1..64), -handshake-workers must be positive")
	}
	dir, err := os.MkdirTemp("", "ph-benchintercept-")
	if err != nil {
		return fmt.Errorf("make temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	// Origin: one certificate for both hosts (IP SANs), from a test CA.
	originCAPEM, originCert, err := testPKI()
	if err != nil {
		return err
	}
	originCAFile := filepath.Join(dir, "origin-ca.pem")
	if err := os.WriteFile(originCAFile, originCAPEM, 0o644); err != nil {
		return fmt.Errorf("write origin CA: %w", err)
	}
	originRoots := x509.NewCertPool()
	originRoots.AppendCertsFromPEM(originCAPEM)
	body := bytes.Repeat([]byte("x"), bodySize)
	var served atomic.Int64
	ol, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		return fmt.Errorf("listen origin: %w", err)
	}
	originPort := ol.Addr().(*net.TCPAddr).Port
	origin := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served.Add(1)
			w.Header().Set("Content-Type", "text/plain")
			w.Write(body)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{originCert}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          quietLog(),
	}
	go origin.ServeTLS(ol, "", "")
	defer origin.Close()

	// Upstream proxies on every loopback address; the pool lists them
	// under 64 distinct addresses.
	var ups []*miniproxy.Proxy
	for i := 0; i < o.upstreams; i++ {
		p, err := miniproxy.Start(miniproxy.Options{Addr: "0.0.0.0:0"})
		if err != nil {
			return fmt.Errorf("start upstream: %w", err)
		}
		defer p.Close()
		ups = append(ups, p)
	}
	var ipList []string
	for i := 0; i < poolIPs; i++ {
		_, port, _ := net.SplitHostPort(ups[i%len(ups)].Addr())
		ipList = append(ipList, strconv.Quote(fmt.Sprintf("127.0.2.%d:%s", i+1, port)))
	}

	// The agent.
	agentCACert, agentCAKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	var agentRoots *x509.CertPool
	interception := ""
	interceptTarget := ""
	if o.intercept {
		if out, err := exec.Command(o.bin, "ca", "init", "--cert", agentCACert, "--key", agentCAKey).CombinedOutput(); err != nil {
			return fmt.Errorf("run ca init: %w\n%s", err, out)
		}
		pemBytes, err := os.ReadFile(agentCACert)
		if err != nil {
			return fmt.Errorf("read agent CA: %w", err)
		}
		agentRoots = x509.NewCertPool()
		if !agentRoots.AppendCertsFromPEM(pemBytes) {
			return errors.New("read agent CA: no certificate in it")
		}
		interception = fmt.Sprintf("interception:\n  caCert: %q\n  caKey: %q\n", agentCACert, agentCAKey)
		// Host A, and 127.1.x.y for the cold-cache handshakes; the regex
		// sees host:port for the CONNECT, then https://host:port/path
		// for each request inside.
		interceptTarget = fmt.Sprintf(`  - name: intercepted
    regex: '^(https://)?(127\.0\.0\.2|127\.1\.\d+\.\d+):\d+(/|$)'
    tlsIntercept: true
    caFile: %q
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 30s
    numRetries: 0
    identity: {enabled: false}
`, originCAFile, strings.Join(ipList, ", "))
	}
	agentPort, err := freePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  logLevel: WARNING
  probe: false
  allowDestinations: [127.0.0.0/8]
%stargets:
%s  - name: tunnelled
    regex: '^127\.0\.0\.3:\d+$'
    caFile: %q
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 30s
    numRetries: 0
    identity: {enabled: false}
`, agentPort, interception, interceptTarget, originCAFile, strings.Join(ipList, ", "))
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	agentLogPath := filepath.Join(dir, "agent.log")
	agentLog, err := os.Create(agentLogPath)
	if err != nil {
		return fmt.Errorf("create agent log: %w", err)
	}
	defer agentLog.Close()
	agent := exec.Command(o.bin, "run", "--config", cfgPath)
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer func() {
		agent.Process.Signal(os.Interrupt)
		agent.Wait()
	}()
	agentAddr := fmt.Sprintf("127.0.0.1:%d", agentPort)
	if err := benchutil.WaitListening(agentAddr, 10*time.Second); err != nil {
		b, _ := os.ReadFile(agentLogPath)
		return fmt.Errorf("wait for agent: %w\n%s", err, tail(b))
	}

	// mitmproxy, intercepting through the first upstream proxy.
	var mitm *exec.Cmd
	var mitmAddr string
	var mitmRoots *x509.CertPool
	if o.mitmdump != "" {
		mitm, mitmAddr, mitmRoots, err = startMitmdump(o.mitmdump, dir, ups[0].Addr(), originCAFile)
		if err != nil {
			return err
		}
		defer func() {
			mitm.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { mitm.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				mitm.Process.Kill()
				<-done
			}
		}()
	}

	origA := net.JoinHostPort(hostIntercept, strconv.Itoa(originPort))
	origB := net.JoinHostPort(hostTunnel, strconv.Itoa(originPort))
	type row struct {
		name  string
		proxy string
		pid   int
		dest  string
		roots *x509.CertPool
		h2    bool
	}
	var rows []row
	rows = append(rows,
		row{"tunnel via agent, HTTP/1.1", agentAddr, agent.Process.Pid, origB, originRoots, false},
		row{"tunnel via agent, h2", agentAddr, agent.Process.Pid, origB, originRoots, true})
	if o.intercept {
		rows = append(rows,
			row{"intercepted by agent, HTTP/1.1", agentAddr, agent.Process.Pid, origA, agentRoots, false},
			row{"intercepted by agent, h2", agentAddr, agent.Process.Pid, origA, agentRoots, true})
	}
	if mitm != nil {
		rows = append(rows,
			row{"mitmproxy, HTTP/1.1", mitmAddr, mitm.Process.Pid, origA, mitmRoots, false},
			row{"mitmproxy, h2", mitmAddr, mitm.Process.Pid, origA, mitmRoots, true})
	}

	if o.only != "" {
		rows = slices.DeleteFunc(rows, func(r row) bool { return !strings.Contains(r.name, o.only) })
		if len(rows) == 0 {
			return fmt.Errorf("-only %q: no such row", o.only)
		}
		fmt.Fprintf(os.Stderr, "agent pid %d\n", agent.Process.Pid)
	}
	// Warm up every path (and check it works) with one short run.
	upTunnels := func() int64 {
		var n int64
		for _, p := range ups {
			n += p.Stats().Tunnels
		}
		return n
	}
	counters := func() (int64, int64) { return served.Load(), upTunnels() }
	for _, r := range rows {
		res, err := load(r.proxy, r.dest, r.roots, r.h2, 4, 500*time.Millisecond, r.pid, counters)
		if err != nil {
			return fmt.Errorf("warm up %s: %w", r.name, err)
		}
		if res.requests == 0 {
			return fmt.Errorf("warm up %s: no request answered (%d errors: %s)", r.name, res.errors, res.firstErr)
		}
	}

	results := map[int][][]loadResult{} // conns → row → rounds
	for _, c := range o.conns {
		results[c] = make([][]loadResult, len(rows))
		for round := 0; round < o.rounds; round++ {
			// Alternate the order too, so no row always follows the same one.
			for k := range rows {
				i := k
				if round%2 == 1 {
					i = len(rows) - 1 - k
				}
				r := rows[i]
				res, err := load(r.proxy, r.dest, r.roots, r.h2, c, o.dur, r.pid, counters)
				if err != nil {
					return fmt.Errorf("%s, %d connections: %w", r.name, c, err)
				}
				results[c][i] = append(results[c][i], res)
				fmt.Fprintf(os.Stderr, "c=%d round %d: %-32s %8.0f req/s p50 %-9s p99 %-9s proxy CPU %6.1fµs/req upstream CONNECTs %d errors %d %s\n",
					c, round+1, r.name, res.rps, res.p50, res.p99, res.proxyCPU, res.upConnects, res.errors, res.firstErr)
			}
		}
	}

	var warm, cold []hsResult
	if o.intercept && o.only == "" {
		seq := &atomic.Uint32{}
		for round := 0; round < o.rounds; round++ {
			for k := 0; k < 2; k++ {
				coldRun := (k+round)%2 == 1
				res, err := handshakes(agentAddr, agentRoots, originPort, coldRun, seq, o.hsWorkers, o.hsDur, agent.Process.Pid)
				if err != nil {
					return err
				}
				name := "warm"
				if coldRun {
					cold = append(cold, res)
					name = "cold"
				} else {
					warm = append(warm, res)
				}
				fmt.Fprintf(os.Stderr, "handshakes round %d: %s %.0f/s agent CPU %.0fµs each, errors %d %s\n",
					round+1, name, res.rate, res.agentCPU, res.errors, res.firstErr)
			}
		}
	}

	names := make([]string, len(rows))
	for i, r := range rows {
		names[i] = r.name
	}
	report(o, names, results, warm, cold)
	return nil
}

// quietLog discards the origin server's own errors (clients hanging up at
// the end of a run).
func quietLog() *log.Logger {
	return slog.NewLogLogger(slog.NewTextHandler(io.Discard, nil), slog.LevelError)
}

// loadResult is one keep-alive load run.
type loadResult struct {
	requests int
	errors   int
	firstErr string
	rps      float64
	p50, p99 time.Duration
	proxyCPU float64 // µs of the proxy process's CPU per request
	selfCPU  float64 // µs of this process's CPU (client, origin, upstreams) per request
	// upConnects is how many CONNECT tunnels the upstream proxies opened
	// during the run.
	upConnects int64
}

// hist is a log-linear latency histogram: 16 sub-buckets per power of two
// of nanoseconds (≤ 6 % error), bounded whatever the run's length.
type hist [64 * 16]int

func (h *hist) add(d time.Duration) {
	v := uint64(max(d, 1))
	e := bits.Len64(v) - 1
	var m uint64
	if e >= 4 {
		m = (v >> (e - 4)) & 15
	} else {
		m = (v << (4 - e)) & 15
	}
	h[e*16+int(m)]++
}

func (h *hist) merge(o *hist) {
	for i := range h {
		h[i] += o[i]
	}
}

// quantile is the middle of the bucket holding quantile q.
func (h *hist) quantile(q float64) time.Duration {
	total := 0
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := int(q*float64(total-1)) + 1
	seen := 0
	for i, n := range h {
		seen += n
		if seen >= want {
			e, m := i/16, uint64(i%16)
			if e >= 5 {
				// the middle of the bucket
				return time.Duration(1<<e | m<<(e-4) | 1<<(e-5))
			}
			return time.Duration(1 << e)
		}
	}
	return 0
}

// dialThrough opens a TCP connection to proxy and CONNECTs to dest.
func dialThrough(proxy, dest string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial proxy: %w", err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dest, dest); err != nil {
		c.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read CONNECT answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", dest, resp.Status)
	}
	if br.Buffered() > 0 {
		c.Close()
		return nil, errors.New("CONNECT: bytes after the answer")
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// clientConn is one keep-alive TLS connection of the load client.
type clientConn struct {
	tc   *tls.Conn
	br   *bufio.Reader
	h2   *http2.ClientConn
	req  []byte // HTTP/1.1 request
	url  string // h2 request URL
	host string
}

func openClient(proxy, dest string, roots *x509.CertPool, h2 bool) (*clientConn, error) {
	c, err := dialThrough(proxy, dest)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(dest)
	proto := "http/1.1"
	if h2 {
		proto = "h2"
	}
	tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: host, NextProtos: []string{proto}})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	tc.SetDeadline(time.Time{})
	if got := tc.ConnectionState().NegotiatedProtocol; got != proto && !(proto == "http/1.1" && got == "") {
		tc.Close()
		return nil, fmt.Errorf("negotiated protocol %q, want %q", got, proto)
	}
	cc := &clientConn{tc: tc, host: dest}
	if h2 {
		cc.h2, err = (&http2.Transport{}).NewClientConn(tc)
		if err != nil {
			tc.Close()
			return nil, fmt.Errorf("start h2: %w", err)
		}
		cc.url = "https://" + dest + "/bench"
	} else {
		cc.br = bufio.NewReaderSize(tc, 4096)
		cc.req = []byte("GET /bench HTTP/1.1\r\nHost: " + dest + "\r\nUser-Agent: benchintercept\r\n\r\n")
	}
	return cc, nil
}

// do sends one GET and reads the whole answer.
func (cc *clientConn) do() error {
	cc.tc.SetDeadline(time.Now().Add(10 * time.Second))
	var resp *http.Response
	if cc.h2 != nil {
		req, err := http.NewRequest(http.MethodGet, cc.url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "benchintercept")
		if resp, err = cc.h2.RoundTrip(req); err != nil {
			return fmt.Errorf("round trip: %w", err)
		}
	} else {
		if _, err := cc.tc.Write(cc.req); err != nil {
			return fmt.Errorf("write request: %w", err)
		}
		var err error
		if resp, err = http.ReadResponse(cc.br, nil); err != nil {
			return fmt.Errorf("read response: %w", err)
		}
	}
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || n != bodySize {
		return fmt.Errorf("answer %s with %d bytes", resp.Status, n)
	}
	return nil
}

func (cc *clientConn) close() {
	if cc.h2 != nil {
		cc.h2.Close()
	}
	cc.tc.Close()
}

// load runs conns keep-alive connections through proxy to dest for d,
// one request after another on each; connections are opened before the
// clock starts. A connection that fails is counted and opened again.
// counters reads the origin's served requests and the upstreams' CONNECTs:
// a run whose client counted more answers than the origin served fails.
func load(proxy, dest string, roots *x509.CertPool, h2 bool, conns int, d time.Duration, pid int, counters func() (served, connects int64)) (loadResult, error) {
	ccs := make([]*clientConn, conns)
	var openErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range ccs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := openClient(proxy, dest, roots, h2)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && openErr == nil {
				openErr = err
			}
			ccs[i] = cc
		}()
	}
	wg.Wait()
	if openErr != nil {
		for _, cc := range ccs {
			if cc != nil {
				cc.close()
			}
		}
		return loadResult{}, fmt.Errorf("open connections: %w", openErr)
	}
	hs := make([]hist, conns)
	counts := make([]int, conns)
	errs := make([]int, conns)
	firstErrs := make([]string, conns)
	served0, connects0 := counters()
	self0, _ := cputime.Self()
	proc0, _ := cputime.Proc(pid)
	start := time.Now()
	end := start.Add(d)
	for i := range ccs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := ccs[i]
			defer func() {
				if cc != nil {
					cc.close()
				}
			}()
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				if cc == nil {
					var err error
					if cc, err = openClient(proxy, dest, roots, h2); err != nil {
						errs[i]++
						if firstErrs[i] == "" {
							firstErrs[i] = err.Error()
						}
						time.Sleep(10 * time.Millisecond)
						continue
					}
					t0 = time.Now()
				}
				if err := cc.do(); err != nil {
					errs[i]++
					if firstErrs[i] == "" {
						firstErrs[i] = err.Error()
					}
					cc.close()
					cc = nil
					continue
				}
				t1 := time.Now()
				if t1.After(end) {
					return
				}
				counts[i]++
				hs[i].add(t1.Sub(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	self1, _ := cputime.Self()
	proc1, _ := cputime.Proc(pid)
	served1, connects1 := counters()
	var r loadResult
	r.upConnects = connects1 - connects0
	var all hist
	for i := range ccs {
		r.requests += counts[i]
		r.errors += errs[i]
		if r.firstErr == "" && firstErrs[i] != "" {
			r.firstErr = firstErrs[i]
		}
		all.merge(&hs[i])
	}
	if len(r.firstErr) > 200 {
		r.firstErr = r.firstErr[:200]
	}
	if n := served1 - served0; n < int64(r.requests) {
		return r, fmt.Errorf("the client counted %d answers, the origin served %d", r.requests, n)
	}
	r.rps = float64(r.requests) / elapsed.Seconds()
	r.p50, r.p99 = all.quantile(0.5), all.quantile(0.99)
	if r.requests > 0 {
		r.proxyCPU = float64(proc1-proc0) / 1e3 / float64(r.requests)
		r.selfCPU = float64(self1-self0) / 1e3 / float64(r.requests)
	}
	return r, nil
}

// hsResult is one handshake run.
type hsResult struct {
	done     int
	errors   int
	firstErr string
	rate     float64 // handshakes per second
	agentCPU float64 // µs of agent CPU per handshake
}

// handshakes opens new TLS connections through the intercepting agent for
// d with workers clients at once: CONNECT, a full handshake verified
// against the agent's CA (ALPN h2, no session resumption), close. Warm:
// always host A (its leaf cached after the first). Cold: a new 127.1.x.y
// every time (seq numbers them across runs), so each handshake mints.
func handshakes(agent string, roots *x509.CertPool, port int, cold bool, seq *atomic.Uint32, workers int, d time.Duration, pid int) (hsResult, error) {
	var done, errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	proc0, _ := cputime.Proc(pid)
	start := time.Now()
	end := start.Add(d)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				host := hostIntercept
				if cold {
					n := seq.Add(1)
					if n >= 250*250 {
						firstErr.CompareAndSwap(nil, "cold names exhausted")
						return
					}
					host = fmt.Sprintf("127.1.%d.%d", n/250, n%250+1)
				}
				err := func() error {
					c, err := dialThrough(agent, net.JoinHostPort(host, strconv.Itoa(port)))
					if err != nil {
						return err
					}
					defer c.Close()
					tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: host, NextProtos: []string{"h2", "http/1.1"}})
					tc.SetDeadline(time.Now().Add(10 * time.Second))
					if err := tc.Handshake(); err != nil {
						return fmt.Errorf("tls handshake with %s: %w", host, err)
					}
					return nil
				}()
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(10 * time.Millisecond)
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	proc1, _ := cputime.Proc(pid)
	r := hsResult{done: int(done.Load()), errors: int(errs.Load())}
	if s, ok := firstErr.Load().(string); ok {
		r.firstErr = s
	}
	r.rate = float64(r.done) / elapsed.Seconds()
	if r.done > 0 {
		r.agentCPU = float64(proc1-proc0) / 1e3 / float64(r.done)
	}
	if r.done == 0 {
		return r, fmt.Errorf("handshakes (cold %v): none completed: %s", cold, r.firstErr)
	}
	return r, nil
}

// startMitmdump starts mitmdump in upstream mode through upstream,
// trusting originCA for its connections to the origin, with its own CA
// in a confdir under dir; it returns the process, its address and the
// pool of its CA (written by mitmdump at first start).
func startMitmdump(bin, dir, upstream, originCA string) (*exec.Cmd, string, *x509.CertPool, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, "", nil, fmt.Errorf("find mitmdump (apt-get install mitmproxy, or -mitmdump ''): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, "", nil, err
	}
	confdir := filepath.Join(dir, "mitmproxy")
	if err := os.Mkdir(confdir, 0o700); err != nil {
		return nil, "", nil, fmt.Errorf("make mitmproxy confdir: %w", err)
	}
	logPath := filepath.Join(dir, "mitmdump.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, "", nil, fmt.Errorf("create mitmdump log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(path, "-q",
		"--listen-host", "127.0.0.1", "--listen-port", strconv.Itoa(port),
		"--mode", "upstream:http://"+upstream,
		"--set", "confdir="+confdir,
		"--set", "ssl_verify_upstream_trusted_ca="+originCA,
		"--set", "flow_detail=0",
		"--set", "termlog_verbosity=error")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, "", nil, fmt.Errorf("start mitmdump: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	fail := func(err error) (*exec.Cmd, string, *x509.CertPool, error) {
		cmd.Process.Kill()
		cmd.Wait()
		b, _ := os.ReadFile(logPath)
		return nil, "", nil, fmt.Errorf("%w\n%s", err, tail(b))
	}
	if err := benchutil.WaitListening(addr, 30*time.Second); err != nil {
		return fail(fmt.Errorf("wait for mitmdump: %w", err))
	}
	caPEM, err := os.ReadFile(filepath.Join(confdir, "mitmproxy-ca-cert.pem"))
	if err != nil {
		return fail(fmt.Errorf("read mitmproxy CA: %w", err))
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fail(errors.New("read mitmproxy CA: no certificate in it"))
	}
	return cmd, addr, roots, nil
}

// testPKI makes the origin's test CA (returned as PEM) and a certificate
// it signs for both hosts.
func testPKI() ([]byte, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("make origin CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "benchintercept origin test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("make origin CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("make origin key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "benchintercept origin"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP(hostIntercept), net.ParseIP(hostTunnel)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("make origin certificate: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func report(o options, names []string, results map[int][][]loadResult, warm, cold []hsResult) {
	host, _ := os.Hostname()
	load1, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("Measured %s on %s (%d CPUs, %s, %s/%s, Go %s), load average at the end %s, with `go run ./scripts/benchintercept`:\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH,
		strings.TrimPrefix(runtime.Version(), "go"), strings.Join(strings.Fields(string(load1))[:min(3, len(strings.Fields(string(load1))))], " "))
	fmt.Printf("%d rounds of %s per row, rows alternating; medians; %d upstream proxies behind %d pool IPs; mitmproxy %s through one of them.\n",
		o.rounds, o.dur, o.upstreams, poolIPs, mitmVersion(o.mitmdump))
	fmt.Println()
	fmt.Println("| connections | path | requests/s | p50 | p99 | proxy CPU per request | client+origin+upstreams CPU per request | errors | vs tunnel (same protocol) | vs mitmproxy (same protocol) |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	idx := func(prefix, proto string) int {
		for i, n := range names {
			if strings.HasPrefix(n, prefix) && strings.HasSuffix(n, proto) {
				return i
			}
		}
		return -1
	}
	var summary []string
	for _, c := range o.conns {
		res := results[c]
		med := func(i int, f func(loadResult) float64) float64 {
			v := make([]float64, len(res[i]))
			for k, r := range res[i] {
				v[k] = f(r)
			}
			return benchutil.Median(v)
		}
		rps := func(i int) float64 { return med(i, func(r loadResult) float64 { return r.rps }) }
		// ratioOf is the median of the per-round ratios of requests/s of
		// row i to row j, formatted with their range, and the median.
		ratioOf := func(i, j int) (string, float64) {
			if i < 0 || j < 0 || i == j {
				return "", 0
			}
			var v []float64
			for k := range res[i] {
				if res[j][k].rps > 0 {
					v = append(v, res[i][k].rps/res[j][k].rps)
				}
			}
			if len(v) == 0 {
				return "", 0
			}
			lo, hi := v[0], v[0]
			for _, x := range v {
				lo, hi = min(lo, x), max(hi, x)
			}
			m := benchutil.Median(v)
			return fmt.Sprintf("%.2f× (%.2f–%.2f)", m, lo, hi), m
		}
		ratio := func(i, j int) string {
			s, _ := ratioOf(i, j)
			return s
		}
		for i, name := range names {
			proto := name[strings.LastIndex(name, ", ")+2:]
			errs := 0
			for _, r := range res[i] {
				errs += r.errors
			}
			fmt.Printf("| %d | %s | %.0f | %s | %s | %.1f µs | %.1f µs | %d | %s | %s |\n", c, name, rps(i),
				dur(med(i, func(r loadResult) float64 { return float64(r.p50) })),
				dur(med(i, func(r loadResult) float64 { return float64(r.p99) })),
				med(i, func(r loadResult) float64 { return r.proxyCPU }),
				med(i, func(r loadResult) float64 { return r.selfCPU }),
				errs, ratio(i, idx("tunnel", proto)), ratio(i, idx("mitmproxy", proto)))
		}
		cpu := func(i int) float64 { return med(i, func(r loadResult) float64 { return r.proxyCPU }) }
		for _, proto := range []string{"HTTP/1.1", "h2"} {
			ic, tu, mi := idx("intercepted", proto), idx("tunnel", proto), idx("mitmproxy", proto)
			if ic < 0 || tu < 0 {
				continue
			}
			line := fmt.Sprintf("| %d | %s | %s | %.2f× |", c, proto, ratio(ic, tu), cpu(ic)/cpu(tu))
			if mi >= 0 {
				s, m := ratioOf(ic, mi)
				verdict := "met"
				if m < 10 {
					verdict = "not met"
				}
				line += fmt.Sprintf(" %s, goal ≥ 10×: %s | %.1f× |", s, verdict, cpu(mi)/cpu(ic))
			} else {
				line += " | |"
			}
			summary = append(summary, line)
		}
	}
	if len(summary) > 0 {
		fmt.Println()
		fmt.Println("Ratios in this run (requests/s: median of the per-round ratios, their range in brackets; CPU: ratio of the medians):")
		fmt.Println()
		fmt.Println("| connections | client | intercepted ÷ tunnel, requests/s | intercepted ÷ tunnel, agent CPU per request | intercepted ÷ mitmproxy, requests/s | mitmproxy CPU per request ÷ agent's, intercepted |")
		fmt.Println("|---|---|---|---|---|---|")
		for _, l := range summary {
			fmt.Println(l)
		}
	}
	if len(warm) > 0 {
		fmt.Println()
		fmt.Printf("New TLS connections through the intercepting agent (%d clients at once, %s per run, CONNECT + full handshake + close, no resumption):\n", o.hsWorkers, o.hsDur)
		fmt.Println()
		fmt.Println("| certificate cache | handshakes/s | agent CPU per handshake | errors |")
		fmt.Println("|---|---|---|---|")
		hrow := func(name string, rs []hsResult) (float64, float64) {
			var rate, cpu []float64
			errs := 0
			for _, r := range rs {
				rate, cpu = append(rate, r.rate), append(cpu, r.agentCPU)
				errs += r.errors
			}
			mr, mc := benchutil.Median(rate), benchutil.Median(cpu)
			fmt.Printf("| %s | %.0f | %.0f µs | %d |\n", name, mr, mc, errs)
			return mr, mc
		}
		wr, wc := hrow("warm (one name, its leaf cached)", warm)
		cr, cc := hrow("cold (a new IP literal each time: one mint each)", cold)
		fmt.Printf("| warm / cold | %.2f× | %.2f× | |\n", wr/cr, wc/cc)
	}
}

func dur(ns float64) string {
	d := time.Duration(ns)
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func mitmVersion(bin string) string {
	if bin == "" {
		return "(not run)"
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "(version unknown)"
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Mitmproxy:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "(version unknown)"
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			_, v, _ := strings.Cut(line, ":")
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail is the last 4 KiB of a log, for error messages.
func tail(b []byte) []byte {
	if len(b) > 4096 {
		return b[len(b)-4096:]
	}
	return b
}
