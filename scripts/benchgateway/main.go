//go:build linux

// Command benchgateway measures gateway mode (issue #4) against its
// baselines in one run and prints Markdown rows (root only).
//
//	go run ./scripts/benchgateway -bin bin/proxy-hopper [-rounds 3 -duration 5s -bulk 3s]
//
// It builds the test topology out of four network namespaces it creates
// (no route out of them, addresses from 198.18.0.0/15) and deletes
// afterwards:
//
//	client 198.18.1.2 ─ g0 │ gateway (agent) │ g1 ─ upstream (one miniproxy on 64 addresses) ─ origin 198.18.3.10
//
// and measures, alternating baseline and candidate in each round:
//   - plain HTTP requests/s, wrk in the client namespace: to the origin with
//     no proxy settings (intercepted by gateway mode) vs to the same agent as
//     an explicit proxy (absolute-form requests);
//   - bulk upload throughput client → origin: a raw TCP stream intercepted
//     by gateway mode (tunnelled through an upstream CONNECT) vs the same
//     stream sent through an explicit CONNECT to the same agent;
//   - plain routed traffic (a port gateway mode does not intercept, agent
//     stopped) with and without the counting programs attached as the agent
//     attaches them (ph_lan_ingress on g0, ph_up_egress/ph_up_ingress on g1).
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	gwmode "github.com/proxy-hopper/proxy-hopper/intercept/gateway"
	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
)

const (
	clientIP = "198.18.1.2"
	lanIP    = "198.18.1.1"
	uplinkIP = "198.18.2.1"
	upIP     = "198.18.2.2"
	originIP = "198.18.3.10"
)

var (
	bin      = flag.String("bin", "bin/proxy-hopper", "agent binary")
	rounds   = flag.Int("rounds", 3, "rounds per measurement")
	duration = flag.Duration("duration", 5*time.Second, "wrk duration of one run")
	bulk     = flag.Duration("bulk", 3*time.Second, "duration of one bulk transfer")
	conns    = flag.Int("connections", 64, "wrk connections (and upstream addresses)")
	only     = flag.String("rows", "http,bulk,routed", "which measurements to run")
)

func main() {
	flag.Parse()
	if err := benchutil.Isolate(); err != nil {
		fmt.Fprintln(os.Stderr, "benchgateway:", err)
		os.Exit(1)
	}
	var err error
	switch os.Getenv("PH_BENCH_ROLE") {
	case "upstream":
		err = upstream()
	case "bulk":
		err = bulkClient()
	default:
		err = outer()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchgateway:", err)
		os.Exit(1)
	}
}

// upstream runs the upstream proxy until stdin closes (inside the upstream
// namespace, so its own connections to the origin stay in the topology).
func upstream() error {
	up, err := miniproxy.Start(miniproxy.Options{Addr: "0.0.0.0:3128"})
	if err != nil {
		return err
	}
	defer up.Close()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// bulkClient sends a stream for PH_BULK_SECS to PH_BULK_ADDR (directly, or
// through an explicit CONNECT to PH_BULK_PROXY), half-closes, waits for the
// sink to report the bytes it read, and prints MB/s.
func bulkClient() error {
	d, err := time.ParseDuration(os.Getenv("PH_BULK_SECS"))
	if err != nil {
		return err
	}
	addr, proxy := os.Getenv("PH_BULK_ADDR"), os.Getenv("PH_BULK_PROXY")
	dial := addr
	if proxy != "" {
		dial = proxy
	}
	c, err := net.DialTimeout("tcp", dial, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if proxy != "" {
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			return fmt.Errorf("CONNECT: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("CONNECT: %s", resp.Status)
		}
	}
	buf := make([]byte, 64<<10)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read sink report: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		return fmt.Errorf("sink report %q", line)
	}
	fmt.Printf("%.1f\n", float64(n)/time.Since(start).Seconds()/1e6)
	return nil
}

type ns struct {
	name string
	h    netns.NsHandle
}

func (n *ns) path() string { return "/run/netns/" + n.name }

// do runs fn on a thread inside n.
func (n *ns) do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(n.h); err != nil {
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // never reuse this thread
		return err
	}
	return ferr
}

func (n *ns) cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.path(), name}, args...)...)
}

type topo struct {
	client, gw, up, origin *ns
}

func newNs(name string) (*ns, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread()
		return nil, err
	}
	n := &ns{name: name, h: h}
	return n, n.link(func(nl *netlink.Handle) error {
		lo, err := nl.LinkByName("lo")
		if err != nil {
			return err
		}
		return nl.LinkSetUp(lo)
	})
}

func (n *ns) link(fn func(*netlink.Handle) error) error {
	nl, err := netlink.NewHandleAt(n.h)
	if err != nil {
		return err
	}
	defer nl.Close()
	return fn(nl)
}

func veth(a *ns, aIf string, aAddrs []string, b *ns, bIf string, bAddrs []string) error {
	err := a.link(func(nl *netlink.Handle) error {
		return nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aIf}, PeerName: bIf, PeerNamespace: netlink.NsFd(int(b.h))})
	})
	if err != nil {
		return fmt.Errorf("veth %s/%s: %w", aIf, bIf, err)
	}
	for _, s := range []struct {
		n     *ns
		name  string
		addrs []string
	}{{a, aIf, aAddrs}, {b, bIf, bAddrs}} {
		err := s.n.link(func(nl *netlink.Handle) error {
			l, err := nl.LinkByName(s.name)
			if err != nil {
				return err
			}
			for _, a := range s.addrs {
				addr, _ := netlink.ParseAddr(a)
				if err := nl.AddrAdd(l, addr); err != nil {
					return fmt.Errorf("add %s: %w", a, err)
				}
			}
			return nl.LinkSetUp(l)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (n *ns) route(dst, gw string) error {
	return n.link(func(nl *netlink.Handle) error {
		r := &netlink.Route{Gw: net.ParseIP(gw)}
		if dst != "default" {
			_, r.Dst, _ = net.ParseCIDR(dst)
		}
		return nl.RouteAdd(r)
	})
}

func (n *ns) sysctl(key, val string) error {
	return n.do(func() error { return os.WriteFile("/proc/sys/"+key, []byte(val), 0o644) })
}

func (t *topo) build() error {
	if err := veth(t.client, "c0", []string{clientIP + "/24"}, t.gw, "g0", []string{lanIP + "/24"}); err != nil {
		return err
	}
	ups := []string{upIP + "/24"}
	for i := 0; i < *conns; i++ {
		ups = append(ups, fmt.Sprintf("198.18.2.%d/24", 10+i))
	}
	if err := veth(t.gw, "g1", []string{uplinkIP + "/24"}, t.up, "u0", ups); err != nil {
		return err
	}
	if err := veth(t.up, "u1", []string{"198.18.3.1/24"}, t.origin, "o0", []string{originIP + "/24"}); err != nil {
		return err
	}
	for _, r := range []struct {
		n       *ns
		dst, gw string
	}{{t.client, "default", lanIP}, {t.gw, "default", upIP}, {t.up, "198.18.1.0/24", uplinkIP}, {t.origin, "default", "198.18.3.1"}} {
		if err := r.n.route(r.dst, r.gw); err != nil {
			return fmt.Errorf("route in %s: %w", r.n.name, err)
		}
	}
	for _, n := range []*ns{t.gw, t.up} {
		if err := n.sysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	return nil
}

func outer() (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (eBPF, network namespaces)")
	}
	if err := bpf.ProbeGateway(); err != nil {
		return err
	}
	for _, p := range []string{"wrk", "nsenter"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found", p)
		}
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	t := &topo{}
	for i, p := range []**ns{&t.client, &t.gw, &t.up, &t.origin} {
		name := fmt.Sprintf("ph-benchgw-%d-%d", os.Getpid(), i)
		n, err := newNs(name)
		if err != nil {
			return err
		}
		*p = n
		defer func() {
			n.h.Close()
			if e := netns.DeleteNamed(name); e != nil {
				err = errors.Join(err, fmt.Errorf("delete netns %s: %w", name, e))
			}
		}()
	}
	if err := t.build(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ph-benchgw-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// Origin: HTTP :80 (100-byte responses), bulk sinks :9000 and :5000.
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	err = t.origin.do(func() error {
		for _, a := range []string{":80", ":9000", ":5000"} {
			l, err := net.Listen("tcp", originIP+a)
			if err != nil {
				return err
			}
			lns = append(lns, l)
		}
		return nil
	})
	if err != nil {
		return err
	}
	body := bytes.Repeat([]byte("x"), 100)
	osrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	go osrv.Serve(lns[0])
	go sink(lns[1])
	go sink(lns[2])

	// Upstream proxy, in its namespace.
	upc := t.up.cmd(self)
	upc.Env = append(os.Environ(), "PH_BENCH_ROLE=upstream")
	upIn, _ := upc.StdinPipe()
	upOut, _ := upc.StdoutPipe()
	upc.Stderr = os.Stderr
	upc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := upc.Start(); err != nil {
		return err
	}
	defer func() {
		upIn.Close()
		upc.Wait()
	}()
	if line, _ := bufio.NewReader(upOut).ReadString('\n'); line != "ready\n" {
		return fmt.Errorf("upstream said %q", line)
	}

	// The agent: gateway mode on g0/g1 and an explicit listener on the LAN.
	var ipList []string
	for i := 0; i < *conns; i++ {
		ipList = append(ipList, strconv.Quote(fmt.Sprintf("198.18.2.%d:3128", 10+i)))
	}
	cfg := fmt.Sprintf(`server:
  host: 0.0.0.0
  port: 18080
  probe: false
  metrics: false
targets:
  - name: bench
    regex: '^(http://198\.18\.3\.10(:80)?/|198\.18\.3\.10:9000$)'
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 30s
    numRetries: 0
transparent:
  gateway:
    enabled: true
    interfaces: [g0]
    uplinks: [g1]
    ports: [80, 9000]
`, strings.Join(ipList, ", "))
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	agentLog := filepath.Join(dir, "agent.log")
	lf, err := os.Create(agentLog)
	if err != nil {
		return err
	}
	defer lf.Close()
	agent := t.gw.cmd(absBin, "run", "--config", cfgPath, "--log-level", "INFO")
	agent.Stdout, agent.Stderr = lf, lf
	agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	agentDone := false
	stopAgent := func() {
		if !agentDone {
			agentDone = true
			agent.Process.Signal(syscall.SIGTERM)
			agent.Wait()
		}
	}
	defer stopAgent()
	if err := benchutil.WaitLog(agentLog, "gateway mode on", 10*time.Second); err != nil {
		return err
	}

	abs := filepath.Join(dir, "abs.lua")
	os.WriteFile(abs, []byte(fmt.Sprintf("wrk.path = %q\nwrk.headers[\"Host\"] = %q\n", "http://"+originIP+"/bench", originIP)), 0o600)
	wrkArgs := func(extra ...string) []string {
		return append([]string{"-t", "2", "-c", strconv.Itoa(*conns), "-d", duration.String()}, extra...)
	}
	explicit := wrkArgs("-s", abs, "http://"+lanIP+":18080")
	gateway := wrkArgs("http://" + originIP + "/bench")
	var rows []string
	pair := func(name, unit string, base, cand func() (float64, error)) error {
		var b, c []float64
		for i := 0; i < *rounds; i++ {
			for _, x := range []struct {
				f   func() (float64, error)
				out *[]float64
			}{{base, &b}, {cand, &c}} {
				v, err := x.f()
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				*x.out = append(*x.out, v)
			}
			fmt.Fprintf(os.Stderr, "%s round %d: baseline %.0f, candidate %.0f %s\n", name, i+1, b[i], c[i], unit)
		}
		rows = append(rows, fmt.Sprintf("| %s | %.0f | %.0f | %.2f× |", name, benchutil.Median(b), benchutil.Median(c), benchutil.Median(c)/benchutil.Median(b)))
		return nil
	}
	wrkIn := func(args []string) func() (float64, error) {
		return func() (float64, error) { return wrk(t.client, args) }
	}
	bulkIn := func(addr, proxy string) func() (float64, error) {
		return func() (float64, error) { return bulkRun(t.client, self, addr, proxy) }
	}
	// Warm-up.
	for _, a := range [][]string{explicit, gateway} {
		w := slices.Clone(a)
		w[5] = "1s"
		if _, err := wrk(t.client, w); err != nil {
			return err
		}
	}
	want := func(row string) bool { return slices.Contains(strings.Split(*only, ","), row) }
	if want("http") {
		if err := pair("plain HTTP requests/s (baseline: same client, explicit proxy mode, same agent)", "rps",
			wrkIn(explicit), wrkIn(gateway)); err != nil {
			return err
		}
	}
	if want("bulk") {
		if err := pair("bulk upload client→origin, MB/s (baseline: same client, explicit CONNECT to the same agent)", "MB/s",
			bulkIn(originIP+":9000", lanIP+":18080"), bulkIn(originIP+":9000", "")); err != nil {
			return err
		}
	}
	stopAgent()
	if !want("routed") {
		return report(rows)
	}

	// Routed traffic without and with the counting programs.
	g, err := bpf.LoadGateway(bpf.GatewayOptions{})
	if err != nil {
		return err
	}
	defer g.Close()
	if err := g.Configure(bpf.GatewayConfig{Mark: 0x5049, Ports: []uint16{80, 9000}}); err != nil {
		return err
	}
	var atts []*gwmode.TCAttachment
	detach := func() error {
		var errs []error
		for _, a := range atts {
			errs = append(errs, a.Close())
		}
		atts = nil
		return errors.Join(errs...)
	}
	defer detach()
	attach := func() error {
		return t.gw.do(func() error {
			for _, x := range []struct {
				prog    *ebpf.Program
				ifname  string
				ingress bool
			}{{g.LanIngress, "g0", true}, {g.UpEgress, "g1", false}, {g.UpIngress, "g1", true}} {
				a, err := gwmode.AttachTC(x.prog, x.ifname, x.ingress, gwmode.TCAuto)
				if err != nil {
					return err
				}
				atts = append(atts, a)
			}
			return nil
		})
	}
	routedPlain := func() (float64, error) {
		if err := detach(); err != nil {
			return 0, err
		}
		return bulkRun(t.client, self, originIP+":5000", "")
	}
	routedCounted := func() (float64, error) {
		if err := attach(); err != nil {
			return 0, err
		}
		v, err := bulkRun(t.client, self, originIP+":5000", "")
		if err2 := detach(); err == nil {
			err = err2
		}
		return v, err
	}
	// The programs' own run time (BPF_ENABLE_STATS: on while the fd is
	// held, off again when it is closed), a figure the machine's noise does
	// not move.
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF run-time stats: %w", err)
	}
	defer stats.Close()
	if err := pair("routed bulk client→origin (not intercepted), MB/s (baseline: no counting programs; candidate: ph_lan_ingress + ph_up_egress/ingress attached)", "MB/s",
		routedPlain, routedCounted); err != nil {
		return err
	}
	var runtime time.Duration
	var runs uint64
	for _, p := range []*ebpf.Program{g.LanIngress, g.UpEgress, g.UpIngress} {
		st, err := p.Stats()
		if err != nil {
			return fmt.Errorf("program stats: %w", err)
		}
		runtime += st.Runtime
		runs += st.RunCount
	}
	if runs > 0 {
		busy := time.Duration(*rounds) * *bulk
		rows = append(rows, fmt.Sprintf("| counting programs' own run time in those runs: %.0f ns per packet, %d packets; share of the %s of traffic | %s | %.2f%% of one CPU | |",
			float64(runtime.Nanoseconds())/float64(runs), runs, busy, runtime.Round(time.Microsecond), 100*runtime.Seconds()/busy.Seconds()))
	}

	return report(rows)
}

func report(rows []string) error {
	host, _ := os.Hostname()
	fmt.Printf("Measured %s on %s (%d CPUs, %s/%s) with `make bench` as root (`go run ./scripts/benchgateway`):\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("wrk %d connections, %s per run; bulk %s per transfer; %d rounds alternating baseline and candidate; medians.\n\n", *conns, *duration, *bulk, *rounds)
	fmt.Println("| measurement | baseline | gateway | ratio |")
	fmt.Println("|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
	return nil
}

// sink reads each connection to its end, then writes the byte count.
func sink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 64<<10)
			var n int64
			for {
				k, err := c.Read(buf)
				n += int64(k)
				if err != nil {
					break
				}
			}
			fmt.Fprintf(c, "%d\n", n)
		}()
	}
}

func bulkRun(n *ns, self, addr, proxy string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), *bulk+30*time.Second)
	defer cancel()
	c := n.cmd(self)
	c = exec.CommandContext(ctx, c.Path, c.Args[1:]...)
	c.Env = append(os.Environ(), "PH_BENCH_ROLE=bulk", "PH_BULK_ADDR="+addr, "PH_BULK_PROXY="+proxy, "PH_BULK_SECS="+bulk.String())
	out, err := c.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("bulk %s via %q: %w\n%s", addr, proxy, err, out)
	}
	return strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
}

func wrk(n *ns, args []string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := n.cmd("wrk", args...)
	c = exec.CommandContext(ctx, c.Path, c.Args[1:]...)
	out, err := c.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("wrk %v: %w\n%s", args, err, out)
	}
	w, err := benchutil.ParseWrk(string(out))
	if err != nil {
		return 0, err
	}
	if w.SocketErrorsLine != "" {
		fmt.Fprintf(os.Stderr, "wrk %v: %s\n", args, w.SocketErrorsLine)
	}
	if w.Non2xx > 0 {
		return 0, fmt.Errorf("wrk %v: %d non-2xx or 3xx responses", args, w.Non2xx)
	}
	return w.RPS, nil
}
