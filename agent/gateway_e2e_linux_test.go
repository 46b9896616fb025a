package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/intercept/gateway"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// Gateway topology, every address from 198.18.0.0/15, every route between
// the test's own namespaces:
//
//	client (198.18.1.2, .3, .200) ─ c0/g0 ─ gateway (agent) ─ g1/u0 ─ upstream (tinyproxy on .2.10-12) ─ u1/o0 ─ origin (198.18.3.10, .11)
const (
	gwClient     = "198.18.1.2"
	gwClientDeny = "198.18.1.3"   // in sourceCidrs, not in auth.transparent.allowCidrs
	gwClientOut  = "198.18.1.200" // outside sourceCidrs: routed, not intercepted
	gwLAN        = "198.18.1.1"
	gwUplink     = "198.18.2.1"
	gwUpRouter   = "198.18.2.2"
	gwOrigin     = "198.18.3.10"
	gwOriginExcl = "198.18.3.11" // in excludeCidrs
	gwMetrics    = 19090
	gwClient6    = "2001:db8:1::2"
	gwUplink6    = "2001:db8:2::1"
	gwOrigin6    = "2001:db8:3::10"
)

var gwUpstreams = []string{"198.18.2.10", "198.18.2.11", "198.18.2.12"}

type gwEnv struct {
	client, gw, up, origin *testenv.Netns
	bin, dir, caFile       string
	ups                    []*testenv.Tinyproxy
	agents                 int
	lanIfaces              string // transparent.gateway.interfaces ([g0])
	wantLog                string // startAgent waits for it ("gateway mode on")
	// More config: top-level sections (before targets:) and keys of the
	// target (each line indented for it).
	topExtra, targetExtra string
}

func newGatewayEnv(t *testing.T) *gwEnv {
	t.Helper()
	testenv.RequireRoot(t)
	for _, p := range []string{"curl", "tinyproxy", "nsenter", "unshare", "ip", "tc"} {
		testenv.LookPath(t, p)
	}
	if err := bpf.ProbeGateway(); err != nil {
		t.Fatal(err)
	}
	e := &gwEnv{dir: t.TempDir(), lanIfaces: "[g0]", wantLog: "gateway mode on"}
	e.bin = buildAgent(t, e.dir)
	e.client, e.gw, e.up, e.origin = testenv.NewNetns(t), testenv.NewNetns(t), testenv.NewNetns(t), testenv.NewNetns(t)
	// IPv6 from the documentation prefix, only inside these namespaces.
	testenv.Veth(t, e.client, "c0", []string{gwClient + "/24", gwClientDeny + "/24", gwClientOut + "/24", gwClient6 + "/64"},
		e.gw, "g0", []string{gwLAN + "/24", "2001:db8:1::1/64"})
	upAddrs := []string{gwUpRouter + "/24", "2001:db8:2::2/64"}
	for _, u := range gwUpstreams {
		upAddrs = append(upAddrs, u+"/24")
	}
	testenv.Veth(t, e.gw, "g1", []string{gwUplink + "/24", gwUplink6 + "/64"}, e.up, "u0", upAddrs)
	testenv.Veth(t, e.up, "u1", []string{"198.18.3.1/24", "2001:db8:3::1/64"}, e.origin, "o0",
		[]string{"198.18.3.2/24", gwOrigin + "/24", gwOriginExcl + "/24", gwOrigin6 + "/64"})
	e.client.Route(t, "default", gwLAN)
	e.client.Route(t, "::/0", "2001:db8:1::1")
	e.gw.Route(t, "default", gwUpRouter)
	e.gw.Route(t, "::/0", "2001:db8:2::2")
	e.up.Route(t, "198.18.1.0/24", gwUplink)
	e.up.Route(t, "2001:db8:1::/64", gwUplink6)
	e.origin.Route(t, "default", "198.18.3.1")
	e.origin.Route(t, "::/0", "2001:db8:3::1")
	for _, n := range []*testenv.Netns{e.gw, e.up} {
		n.Sysctl(t, "net/ipv4/ip_forward", "1")
		n.Sysctl(t, "net/ipv6/conf/all/forwarding", "1")
	}

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "from=%s path=%s\n", from, r.URL.Path)
	})
	for _, a := range []string{gwOrigin + ":80", gwOrigin + ":8080", gwOriginExcl + ":80", "[" + gwOrigin6 + "]:80", "[" + gwOrigin6 + "]:8080"} {
		srv := &http.Server{Handler: h}
		go srv.Serve(e.origin.Listen(t, a))
		t.Cleanup(func() { srv.Close() })
	}
	cert, caPEM := testCert(t)
	e.caFile = filepath.Join(e.dir, "ca.pem")
	if err := os.WriteFile(e.caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	tsrv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go tsrv.ServeTLS(e.origin.Listen(t, gwOrigin+":443"), "", "")
	t.Cleanup(func() { tsrv.Close() })
	go serveBytes(e.origin.Listen(t, gwOrigin+":9000"))
	for _, ip := range gwUpstreams {
		e.ups = append(e.ups, testenv.StartTinyproxy(t, ip, testenv.TinyproxyOptions{
			Netns: e.up, Hosts: gwOrigin + " origin.test\n", Extra: "Bind " + ip + "\n",
		}))
	}
	return e
}

// startAgent runs the agent binary in the gateway namespace; extra are more
// keys of transparent.gateway.
func (e *gwEnv) startAgent(t *testing.T, extra ...string) *agentProc {
	t.Helper()
	e.agents++
	ips := make([]string, len(gwUpstreams))
	for i, u := range gwUpstreams {
		ips[i] = strconv.Quote(u + ":8888")
	}
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: 18080
  logLevel: DEBUG
  probe: false
  metrics: true
  metricsPort: %d
  shutdownTimeout: 2s
auth:
  enabled: true
  apiKeys: [{name: nobody, key: unused-key}]
  transparent:
    allowCidrs: [{cidr: %s/32}, {cidr: %s/32}, {cidr: 2001:db8:1::/64}]
proxyProviders:
  - name: acme
    regionTag: eu
    ipList: [%s]
targets:
  - name: origin
    regex: '^(http://198\.18\.3\.1[01](:80)?/|origin\.test:443$|198\.18\.3\.10:9000$)'
    ipPool: gw
    minRequestInterval: 1ms
ipPools:
  - name: gw
    ipRequests: [{provider: acme, count: %d}]
transparent:
  unmatched: direct
  gateway:
    enabled: true
    interfaces: %s
    uplinks: [g1]
    ports: [80, 443, 9000]
    excludeCidrs: [%s/32]
    sourceCidrs: [198.18.1.0/25, 2001:db8:1::/64]
`, gwMetrics, gwClient, gwClientOut, strings.Join(ips, ", "), len(ips), e.lanIfaces, gwOriginExcl)
	for _, x := range extra {
		cfg += "    " + x + "\n"
	}
	cfg = strings.Replace(cfg, "    minRequestInterval: 1ms\n", "    minRequestInterval: 1ms\n"+e.targetExtra, 1)
	cfg = strings.Replace(cfg, "\ntargets:\n", "\n"+e.topExtra+"targets:\n", 1)
	path := filepath.Join(e.dir, fmt.Sprintf("gw-agent-%d.yaml", e.agents))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{log: filepath.Join(e.dir, fmt.Sprintf("gw-agent-%d.log", e.agents)), done: make(chan error, 1)}
	lf, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	a.cmd = e.gw.Command(e.bin, "run", "--config", path)
	a.cmd.Stdout, a.cmd.Stderr = lf, lf
	a.cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin"}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		<-a.done
		a.done <- nil
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(a.log)
		if strings.Contains(string(b), e.wantLog) {
			return a
		}
		if strings.Contains(string(b), "gateway mode disabled") || time.Now().After(deadline) {
			t.Fatalf("agent did not start gateway mode:\n%s", b)
		}
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("agent exited: %v\n%s", err, b)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (e *gwEnv) log(t *testing.T, n int) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("gw-agent-%d.log", n)))
	return string(b)
}

// curl runs curl in the client namespace (no proxy settings: the client
// only has a default route via the gateway).
func (e *gwEnv) curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := e.client.Command("curl", append([]string{"-sS", "--max-time", "10", "--noproxy", "*"}, args...)...)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *gwEnv) mustCurl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.curl(t, args...)
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	return out
}

func isGwUpstream(ip string) bool {
	for _, u := range gwUpstreams {
		if ip == u {
			return true
		}
	}
	return false
}

// netState is what gateway mode may add to the gateway namespace, as
// the tools list it: rules, routes of every table, qdiscs, tc filters on
// both interfaces, TCX programs on both interfaces.
func (e *gwEnv) netState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "rule"}, {"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
		{"tc", "qdisc", "show"},
		{"tc", "filter", "show", "dev", "g0", "ingress"}, {"tc", "filter", "show", "dev", "g0", "egress"},
		{"tc", "filter", "show", "dev", "g1", "ingress"}, {"tc", "filter", "show", "dev", "g1", "egress"},
	} {
		out, err := e.gw.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		// The kernel adds IPv6 link-local and multicast routes whenever a
		// veth's carrier comes up (asynchronously): not ours, left out.
		var keep []string
		for _, l := range strings.SplitAfter(string(out), "\n") {
			if !strings.Contains(l, "fe80::") && !strings.Contains(l, "ff00::/8") {
				keep = append(keep, l)
			}
		}
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(args, " "), strings.Join(keep, ""))
	}
	err := e.gw.Do(func() error {
		for _, ifname := range []string{"g0", "g1"} {
			ifc, err := net.InterfaceByName(ifname)
			if err != nil {
				return err
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				qr, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: at})
				if err != nil {
					return err
				}
				fmt.Fprintf(&b, "tcx %s %s: %d program(s)\n", ifname, at, len(qr.Programs))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// scrape reads the agent's /metrics inside the gateway namespace.
func (e *gwEnv) scrape(t *testing.T) string {
	t.Helper()
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) { return e.gw.Dial(addr, 2*time.Second) },
	}}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", gwMetrics))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bpfMetric is the value of a proxy_hopper_bpf_* sample whose labels
// include want.
func bpfMetric(t *testing.T, text, name string, want map[string]string) (float64, map[string]string) {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	f := fams[name]
	if f == nil {
		return 0, nil
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return m.GetCounter().GetValue(), got
	}
	return 0, nil
}

func TestGateway(t *testing.T) {
	start := time.Now()
	e := newGatewayEnv(t)
	before := e.netState(t)
	a := e.startAgent(t)
	t.Logf("setup %s", time.Since(start))

	t.Run("HTTPSpreadOverUpstreams", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 6 {
			for _, f := range fromOf(e.mustCurl(t, fmt.Sprintf("http://%s/r%d", gwOrigin, i))) {
				if !isGwUpstream(f) {
					t.Fatalf("request r%d reached the origin from %s, not an upstream", i, f)
				}
				seen[f]++
			}
		}
		if len(seen) < 2 {
			t.Errorf("6 requests used upstreams %v, want them spread", seen)
		}
		var logs strings.Builder
		for _, u := range e.ups {
			logs.WriteString(strings.Join(u.Requests(t), "\n") + "\n")
		}
		for i := range 6 {
			if !strings.Contains(logs.String(), fmt.Sprintf("GET http://%s/r%d", gwOrigin, i)) {
				t.Errorf("upstream logs miss r%d:\n%s", i, logs.String())
			}
		}
	})
	t.Run("KeepAliveRotatesPerRequest", func(t *testing.T) {
		out := e.mustCurl(t, "-w", "connects=%{num_connects}\n", "http://"+gwOrigin+"/k1", "http://"+gwOrigin+"/k2")
		froms := fromOf(out)
		if len(froms) != 2 || froms[0] == froms[1] || !isGwUpstream(froms[0]) || !isGwUpstream(froms[1]) {
			t.Errorf("keep-alive requests came from %v, want two different upstreams\n%s", froms, out)
		}
		if !strings.Contains(out, "connects=0\n") {
			t.Errorf("curl did not reuse its connection:\n%s", out)
		}
	})
	t.Run("HTTPSMatchedBySNI", func(t *testing.T) {
		out := e.mustCurl(t, "--cacert", e.caFile, "--resolve", "origin.test:443:"+gwOrigin, "https://origin.test/s")
		if f := fromOf(out); len(f) != 1 || !isGwUpstream(f[0]) {
			t.Errorf("https response %q, want it via an upstream", out)
		}
		found := false
		for _, u := range e.ups {
			if strings.Contains(strings.Join(u.Requests(t), "\n"), "CONNECT origin.test:443") {
				found = true
			}
		}
		if !found {
			t.Error("no upstream logged CONNECT origin.test:443")
		}
	})
	direct := func(t *testing.T, from string, args ...string) {
		t.Helper()
		out := e.mustCurl(t, args...)
		if f := fromOf(out); len(f) != 1 || f[0] != from {
			t.Errorf("%v: got %q, want it routed (origin sees %s)", args, out, from)
		}
	}
	t.Run("ExcludedPortRouted", func(t *testing.T) { direct(t, gwClient, "http://"+gwOrigin+":8080/p") })
	t.Run("ExcludedCIDRRouted", func(t *testing.T) { direct(t, gwClient, "http://"+gwOriginExcl+"/c") })
	t.Run("ExcludedSourceRouted", func(t *testing.T) {
		direct(t, gwClientOut, "--interface", gwClientOut, "http://"+gwOrigin+"/s")
	})
	t.Run("SourceNotAllowedRefused", func(t *testing.T) {
		// Intercepted (in sourceCidrs) but not in auth.transparent.allowCidrs.
		out, err := e.curl(t, "-w", "\nstatus=%{http_code}", "--interface", gwClientDeny, "http://"+gwOrigin+"/deny")
		if err != nil || !strings.Contains(out, "status=403") || !strings.Contains(out, "source_not_allowed") {
			t.Errorf("client %s not in allowCidrs got %q", gwClientDeny, out)
		}
		// The request line is logged after the answer is written: wait for it.
		testenv.Eventually(t, 5*time.Second, func() error {
			if l := e.log(t, e.agents); !strings.Contains(l, "source_not_allowed") && !strings.Contains(l, "not in auth.transparent.allowCidrs") {
				return fmt.Errorf("agent log has no refusal for %s", gwClientDeny)
			}
			return nil
		})
	})

	t.Run("IPv6ExcludedPortRouted", func(t *testing.T) { direct(t, gwClient6, "-g", "http://["+gwOrigin6+"]:8080/p6") })
	t.Run("IPv6Intercepted", func(t *testing.T) {
		// Unmatched (no target for IPv6 URLs) and unmatched: direct, so the
		// agent dials the origin itself: the origin sees the gateway's
		// uplink address, not the client's.
		out := e.mustCurl(t, "-g", "http://["+gwOrigin6+"]/v6")
		if f := fromOf(out); len(f) != 1 || f[0] != gwUplink6 {
			t.Errorf("IPv6 request: %q, want it made by the agent (from %s)", out, gwUplink6)
		}
	})
	t.Run("SYNOnAgentTimeWaitReachesTheAgent", func(t *testing.T) {
		// Connection: close makes the agent close first (the client reads to
		// EOF before closing), so the agent's socket for this 4-tuple is in
		// TIME_WAIT when the same client port connects again.
		for i := range 2 {
			var body []byte
			err := e.client.Do(func() error {
				d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(gwClient), Port: 40123},
					Control: func(_, _ string, c syscall.RawConn) error {
						return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
					}}
				c, err := d.Dial("tcp", gwOrigin+":80")
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "GET /tw%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", i, gwOrigin)
				body, err = io.ReadAll(c)
				return err
			})
			if err != nil {
				t.Fatalf("request %d from port 40123: %v", i, err)
			}
			if f := fromOf(string(body)); len(f) != 1 || !isGwUpstream(f[0]) {
				t.Fatalf("request %d from port 40123: %q, want it via an upstream", i, body)
			}
		}
	})
	t.Run("SYNCookies", func(t *testing.T) {
		// Every SYN answered with a cookie: the handshake's last ACK finds
		// no request socket and must still reach the agent's listener.
		e.gw.Sysctl(t, "net/ipv4/tcp_syncookies", "2")
		defer e.gw.Sysctl(t, "net/ipv4/tcp_syncookies", "1")
		for i := range 3 {
			if f := fromOf(e.mustCurl(t, fmt.Sprintf("http://%s/cookie%d", gwOrigin, i))); len(f) != 1 || !isGwUpstream(f[0]) {
				t.Fatalf("with SYN cookies: %v, want via an upstream", f)
			}
		}
	})
	t.Run("CountersMatchBytesSent", func(t *testing.T) { e.counters(t, a) })

	t.Run("BPFStatusListsTCXLinks", func(t *testing.T) {
		out, err := exec.Command(e.bin, "bpf", "status", "--pin-dir", filepath.Join(e.dir, "no-pins")).CombinedOutput()
		if err != nil {
			t.Fatalf("bpf status: %v\n%s", err, out)
		}
		var idx [2]int
		if err := e.gw.Do(func() error {
			for i, name := range []string{"g0", "g1"} {
				ifc, err := net.InterfaceByName(name)
				if err != nil {
					return err
				}
				idx[i] = ifc.Index
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			fmt.Sprintf("ph_lan_ingress on ifindex %d (TCXIngress)", idx[0]),
			fmt.Sprintf("ph_up_egress on ifindex %d (TCXEgress)", idx[1]),
			fmt.Sprintf("ph_up_ingress on ifindex %d (TCXIngress)", idx[1]),
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("bpf status misses %q:\n%s", want, out)
			}
		}
	})

	t.Run("CleanStopLeavesNothing", func(t *testing.T) {
		// A tunnel in flight keeps the agent draining (up to its 2s grace);
		// meanwhile new flows are routed, not intercepted.
		held, err := e.client.Dial(gwOrigin+":9000", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		if _, err := io.WriteString(held, "@HOLD\n"); err != nil {
			t.Fatal(err)
		}
		line := make([]byte, 3)
		if _, err := io.ReadFull(held, line); err != nil || string(line) != "ok\n" {
			t.Fatalf("held tunnel: %q, %v", line, err)
		}
		if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 5*time.Second, func() error {
			if !strings.Contains(e.log(t, e.agents), "shutting down") {
				return errors.New("the agent did not log that it is shutting down")
			}
			return nil
		})
		time.Sleep(50 * time.Millisecond) // drain set right after the log line
		direct(t, gwClient, "http://"+gwOrigin+"/while-draining")
		if _, err := io.WriteString(held, "still here\n"); err != nil {
			t.Errorf("tunnel in flight broken while draining: %v", err)
		}
		// Alive: nothing to read, no EOF, no reset (the origin only reads).
		_ = held.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := held.Read(line); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("tunnel in flight while draining: read %v, want it open and silent", err)
		}
		a.stop(t, syscall.SIGTERM)
		if after := e.netState(t); after != before {
			t.Errorf("gateway namespace after a clean stop differs:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		direct(t, gwClient, "http://"+gwOrigin+"/after-stop")
	})

	t.Run("Kill9LeftoversRemovedOnRestart", func(t *testing.T) {
		k := e.startAgent(t, "tcAttach: clsact")
		if f := fromOf(e.mustCurl(t, "http://"+gwOrigin+"/clsact")); len(f) != 1 || !isGwUpstream(f[0]) {
			t.Fatalf("clsact mode: %v, want via an upstream", f)
		}
		k.stop(t, syscall.SIGKILL)
		status, err := e.gw.Command(e.bin, "bpf", "status", "--pin-dir", filepath.Join(e.dir, "no-pins")).CombinedOutput()
		if err != nil {
			t.Fatalf("bpf status: %v\n%s", err, status)
		}
		for _, want := range []string{"gateway netlink: rule: priority 20552 fwmark 0x5049 table 20552 proto 72",
			"gateway netlink: route: local 0.0.0.0/0 table 20552 proto 72", "gateway netlink: filter: ph_lan_ingress on g0",
			"gateway netlink: qdisc: clsact on g1"} {
			if !strings.Contains(string(status), want) {
				t.Errorf("bpf status after kill -9 misses %q:\n%s", want, status)
			}
		}
		left := e.netState(t)
		for _, want := range []string{"lookup 20552 proto 72", "local default dev lo table 20552 proto 72", "clsact", "ph_lan_ingress"} {
			if !strings.Contains(left, want) {
				t.Errorf("after kill -9 the leftovers miss %q:\n%s", want, left)
			}
		}
		// Fail-open: the filter's program finds no listener and lets the flow be routed.
		direct(t, gwClient, "http://"+gwOrigin+"/after-kill")

		r := e.startAgent(t)
		log := e.log(t, e.agents)
		for _, want := range []string{"removed leftover of an earlier agent", "what=\"qdisc: clsact on g0\"", "what=\"filter: ph_lan_ingress on g0\""} {
			if !strings.Contains(log, want) {
				t.Errorf("restarted agent's log misses %q:\n%s", want, log)
			}
		}
		if f := fromOf(e.mustCurl(t, "http://"+gwOrigin+"/restarted")); len(f) != 1 || !isGwUpstream(f[0]) {
			t.Errorf("after restart: %v, want via an upstream", f)
		}
		r.stop(t, syscall.SIGTERM)
		if after := e.netState(t); after != before {
			t.Errorf("gateway namespace after kill -9, restart and stop differs:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(e.gw.Path, &st); err != nil {
			t.Fatal(err)
		}
		if n := countFiles(gateway.StateDir, fmt.Sprintf("clsact-net%d-", st.Ino)); n != 0 {
			t.Errorf("%d clsact marker file(s) left in %s", n, gateway.StateDir)
		}
	})
	t.Run("SetupFailureUndoesEverything", func(t *testing.T) {
		// g0 attaches, nope0 does not: gateway mode is disabled with an
		// error naming the field, nothing stays, the agent serves on.
		e.lanIfaces, e.wantLog = "[g0, nope0]", "gateway mode disabled"
		defer func() { e.lanIfaces, e.wantLog = "[g0]", "gateway mode on" }()
		b := e.startAgent(t)
		log := e.log(t, e.agents)
		if !strings.Contains(log, "transparent.gateway.interfaces: interface nope0") {
			t.Errorf("agent log does not name the bad interface:\n%s", log)
		}
		if after := e.netState(t); after != before {
			t.Errorf("gateway namespace after a failed setup differs:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		direct(t, gwClient, "http://"+gwOrigin+"/failed-setup")
		b.stop(t, syscall.SIGTERM)
	})
	t.Logf("total %s", time.Since(start))
}

func countFiles(dir, prefix string) int {
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return -1
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			n++
		}
	}
	return n
}

// hdrBytes is the header allowance per counted packet: the TC programs
// count skb->len, which is the Ethernet (14), IPv4 (20) and TCP header with
// timestamps (32) plus the payload; a GSO packet is one skb with one set of
// headers. So bytes counted = payload + 66 × packets counted (SYNs carry 8
// bytes more options, which the 2% tolerance absorbs).
const hdrBytes = 66

type gwSample struct{ bytes, packets float64 }

func (e *gwEnv) sample(t *testing.T, text, ip, dir string) gwSample {
	t.Helper()
	b, _ := bpfMetric(t, text, "proxy_hopper_bpf_ip_bytes_total", map[string]string{"ip": ip, "direction": dir})
	p, _ := bpfMetric(t, text, "proxy_hopper_bpf_ip_packets_total", map[string]string{"ip": ip, "direction": dir})
	return gwSample{b, p}
}

func (e *gwEnv) connects(t *testing.T, up *testenv.Tinyproxy) int {
	n := 0
	for _, r := range up.Requests(t) {
		if strings.HasPrefix(r, "CONNECT "+gwOrigin+":9000") {
			n++
		}
	}
	return n
}

// counters sends known byte counts through the gateway and compares them
// with what the agent exports per upstream IP and per client, then checks
// `proxy-hopper bpf counters` prints the same figures.
func (e *gwEnv) counters(t *testing.T, a *agentProc) {
	const conns, nup = 6, 2 << 20
	m0 := e.scrape(t)
	var c0 []int
	for _, u := range e.ups {
		c0 = append(c0, e.connects(t, u))
	}
	conn0, _ := bpfMetric(t, m0, "proxy_hopper_bpf_client_connections_total", map[string]string{"client": gwClient})

	errs := make(chan error, conns)
	for i := range conns {
		go func() {
			errs <- e.client.Do(func() error {
				seed := uint64(500 + 2*i)
				got, err := shaConn(gwOrigin+":9000", seed, nup, 0, false)
				if err != nil {
					return err
				}
				if want := "up=" + payloadSum(seed, nup); !strings.HasPrefix(got, want) {
					return fmt.Errorf("conn %d: %s, want %s", i, got, want)
				}
				return nil
			})
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // the last ACKs and FINs
	m1 := e.scrape(t)

	total := 0
	for i, u := range e.ups {
		ip := gwUpstreams[i]
		k := e.connects(t, u) - c0[i]
		total += k
		s0, s1 := e.sample(t, m0, ip, "out"), e.sample(t, m1, ip, "out")
		sent := float64(k * nup)
		got, pk := s1.bytes-s0.bytes, s1.packets-s0.packets
		want := sent + hdrBytes*pk
		t.Logf("upstream %s: %d tunnel(s), %.0f payload bytes sent; counted %.0f bytes in %.0f packets (payload + %d × packets = %.0f)",
			ip, k, sent, got, pk, hdrBytes, want)
		if k == 0 {
			continue
		}
		if diff := got - want; diff < -0.02*sent || diff > 0.02*sent {
			t.Errorf("upstream %s: counted %.0f bytes, want %.0f ± 2%% (payload %.0f + headers)", ip, got, want, sent)
		}
		_, labels := bpfMetric(t, m1, "proxy_hopper_bpf_ip_bytes_total", map[string]string{"ip": ip, "direction": "out"})
		if labels["target"] != "origin" || labels["provider"] != "acme" || labels["region"] != "eu" {
			t.Errorf("upstream %s labels %v, want target origin, provider acme, region eu", ip, labels)
		}
	}
	if total != conns {
		t.Fatalf("upstreams logged %d CONNECTs to %s:9000, want %d", total, gwOrigin, conns)
	}
	// The client's side (LAN ingress): its uploads, plus headers.
	cs0, cs1 := e.sample(t, m0, gwClient, "client"), e.sample(t, m1, gwClient, "client")
	sent := float64(conns * nup)
	got, pk := cs1.bytes-cs0.bytes, cs1.packets-cs0.packets
	if diff := got - (sent + hdrBytes*pk); diff < -0.02*sent || diff > 0.02*sent {
		t.Errorf("client %s: counted %.0f bytes in %.0f packets, want %.0f payload + headers ± 2%%", gwClient, got, pk, sent)
	}
	conn1, _ := bpfMetric(t, m1, "proxy_hopper_bpf_client_connections_total", map[string]string{"client": gwClient})
	if conn1-conn0 != conns {
		t.Errorf("client_connections_total{client=%s} grew by %.0f, want %d", gwClient, conn1-conn0, conns)
	}

	// `bpf counters` reads the same maps.
	out, err := e.gw.Command(e.bin, "bpf", "counters", "--pid", strconv.Itoa(a.cmd.Process.Pid)).CombinedOutput()
	if err != nil {
		t.Fatalf("bpf counters: %v\n%s", err, out)
	}
	m2 := e.scrape(t)
	for _, ip := range gwUpstreams {
		s := e.sample(t, m2, ip, "out")
		want := fmt.Sprintf("%s out %.0f %.0f", ip, s.packets, s.bytes)
		if !strings.Contains(strings.Join(strings.Fields(string(out)), " "), want) {
			t.Errorf("bpf counters misses %q:\n%s", want, out)
		}
	}
	t.Logf("bpf counters:\n%s", out)
}
