//go:build linux

// Command benchtransparent measures local transparent mode (issue #3)
// against its baselines in one run and prints Markdown rows (root only).
//
//	go run ./scripts/benchtransparent -bin bin/proxy-hopper [-rounds 3 -duration 5s]
//
// Everything that carries traffic runs inside a network namespace the
// bench creates (no route out; origin 198.18.0.10 on its loopback) and
// deletes afterwards; iptables rules exist only in that namespace. The
// outer process creates the namespace and two child cgroups, then re-runs
// itself inside the namespace (nsenter --net) where it starts an origin
// (HTTP :80 and HTTPS :443, 100-byte responses), one upstream forward proxy
// (internal/miniproxy), the agent (transparent mode on the "ebpf" cgroup,
// sockmap on) and redsocks (behind an iptables REDIRECT for the "redsocks"
// cgroup only, so the upstream's own connections are exempt), and drives
// them with wrk from those cgroups. Rounds alternate baseline and candidate.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
)

const originIP = "198.18.0.10"

var (
	bin      = flag.String("bin", "bin/proxy-hopper", "agent binary")
	rounds   = flag.Int("rounds", 3, "rounds per measurement")
	duration = flag.Duration("duration", 5*time.Second, "wrk duration of one run")
	conns    = flag.Int("connections", 64, "wrk connections")
	sockmap  = flag.Bool("sockmap", true, "transparent.local.sockmap of the agent")
	rows     = flag.String("rows", "http,tunnel,bulk", "which rows to measure (comma-separated: http, tunnel, bulk)")
)

func row(name string) bool { return slices.Contains(strings.Split(*rows, ","), name) }

func main() {
	flag.Parse()
	if err := benchutil.Isolate(); err != nil {
		fmt.Fprintln(os.Stderr, "benchtransparent:", err)
		os.Exit(1)
	}
	var err error
	if os.Getenv("PH_BENCH_INNER") == "1" {
		err = inner()
	} else {
		err = outer()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtransparent:", err)
		os.Exit(1)
	}
}

// outer makes the namespace and cgroups, runs inner in them, and removes
// everything, also on failure.
func outer() (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (eBPF, network namespace, iptables)")
	}
	if err := bpf.Probe(); err != nil {
		return err
	}
	for _, p := range []string{"wrk", "nsenter", "redsocks", "iptables"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found", p)
		}
	}
	absBin, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	var sockRows string
	if row("bulk") {
		if sockRows, err = sockmapBench(); err != nil {
			return err
		}
	}

	root, err := bpf.Cgroup2Root()
	if err != nil {
		return err
	}
	var cgs []string
	defer func() {
		for _, cg := range cgs {
			if id, e := bpf.CgroupID(cg); e == nil {
				_, _ = bpf.DetachMatching(func(a bpf.Attachment) bool { return a.CgroupID == id })
			}
			for i := 0; i < 50; i++ {
				if e := os.Remove(cg); e == nil || errors.Is(e, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if _, e := os.Stat(cg); e == nil {
				err = errors.Join(err, fmt.Errorf("cgroup %s left behind", cg))
			}
		}
	}()
	for _, name := range []string{"agent", "ebpf", "redsocks"} {
		d, err := os.MkdirTemp(root, "ph-bench-"+name+"-")
		if err != nil {
			return err
		}
		cgs = append(cgs, d)
	}

	name := fmt.Sprintf("ph-bench-%d", os.Getpid())
	if err := makeNetns(name); err != nil {
		return err
	}
	defer func() {
		if e := netns.DeleteNamed(name); e != nil {
			err = errors.Join(err, fmt.Errorf("delete netns %s: %w", name, e))
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	self, _ := os.Executable()
	args := append([]string{"--net=/run/netns/" + name, self}, os.Args[1:]...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = append(os.Environ(), "PH_BENCH_INNER=1", "PH_BENCH_BIN="+absBin,
		"PH_BENCH_CG_AGENT="+cgs[0], "PH_BENCH_CG_EBPF="+cgs[1], "PH_BENCH_CG_REDSOCKS="+cgs[2])
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("inner bench: %w", err)
	}
	host, _ := os.Hostname()
	fmt.Printf("Measured %s on %s (%d CPUs, %s/%s) with `make bench` as root (`go run ./scripts/benchtransparent`):\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("wrk %d connections, %s per run, %d rounds alternating baseline and candidate; medians.\n\n", *conns, *duration, *rounds)
	fmt.Println("| measurement | baseline | transparent | ratio |")
	fmt.Println("|---|---|---|---|")
	fmt.Print(out.String())
	fmt.Print(sockRows)
	return nil
}

func makeNetns(name string) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // this thread must die with us
		return err
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := nl.LinkSetUp(lo); err != nil {
		return err
	}
	a, _ := netlink.ParseAddr(originIP + "/32")
	return nl.AddrAdd(lo, a)
}

// sockmapBench runs the loopback throughput benchmark of the bpf package.
func sockmapBench() (string, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "LoopbackThroughput", "-benchtime", "1s", "-count", strconv.Itoa(*rounds), "./bpf/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("bpf benchmark: %w\n%s", err, out)
	}
	re := regexp.MustCompile(`BenchmarkLoopbackThroughput/(\w+)/(\d+KiB)-\d+\s+\d+\s+[\d.]+ ns/op\s+([\d.]+) MB/s`)
	mbs := map[string][]float64{}
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[3], 64)
		mbs[m[1]+"/"+m[2]] = append(mbs[m[1]+"/"+m[2]], v)
	}
	var b strings.Builder
	for _, size := range []string{"64KiB", "1024KiB"} {
		t, s := benchutil.Median(mbs["tcp/"+size]), benchutil.Median(mbs["sockmap/"+size])
		if t == 0 || s == 0 {
			return "", fmt.Errorf("bpf benchmark: no %s figures in\n%s", size, out)
		}
		fmt.Fprintf(&b, "| bulk client→agent over loopback, %s writes (MB/s; baseline: sockmap off) | %.0f | %.0f | %.2f× |\n", size, t, s, s/t)
	}
	return b.String(), nil
}

// inner runs inside the namespace.
func inner() error {
	dir, err := os.MkdirTemp("", "ph-bench-t-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cgAgent, cgEBPF, cgRed := os.Getenv("PH_BENCH_CG_AGENT"), os.Getenv("PH_BENCH_CG_EBPF"), os.Getenv("PH_BENCH_CG_REDSOCKS")
	body := bytes.Repeat([]byte("x"), 100)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	ln80, err := net.Listen("tcp", originIP+":80")
	if err != nil {
		return err
	}
	ln443, err := net.Listen("tcp", originIP+":443")
	if err != nil {
		return err
	}
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	o80 := &http.Server{Handler: h}
	// wrk ends its runs mid-handshake: keep those errors out of the report.
	o443 := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ErrorLog: log.New(io.Discard, "", 0)}
	go o80.Serve(ln80)
	go o443.ServeTLS(ln443, "", "")
	defer o80.Close()
	defer o443.Close()
	// One upstream proxy, listed in the pool under 64 loopback addresses
	// (a pool IP serves one request or tunnel at a time).
	up, err := miniproxy.Start(miniproxy.Options{Addr: "0.0.0.0:0"})
	if err != nil {
		return err
	}
	defer up.Close()
	_, upPort, _ := net.SplitHostPort(up.Addr())
	var ipList []string
	for i := 1; i <= *conns; i++ {
		ipList = append(ipList, strconv.Quote(fmt.Sprintf("127.0.0.%d:%s", i, upPort)))
	}

	// The agent: transparent mode on the ebpf cgroup (and its own).
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: 18080
  logLevel: WARNING
  probe: false
targets:
  - name: bench
    regex: '^(http://198\.18\.0\.10(:80)?/|198\.18\.0\.10:443$)'
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 30s
    numRetries: 0
transparent:
  local:
    enabled: true
    cgroups: [%q, %q]
    ports: [80, 443]
    sockmap: %v
    pinDir: /sys/fs/bpf/ph-bench-%d
`, strings.Join(ipList, ", "), cgEBPF, cgAgent, *sockmap, os.Getpid())
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
	cgFD := func(p string) int {
		f, err := os.Open(p)
		if err != nil {
			panic(err)
		}
		return int(f.Fd()) // kept open until exit
	}
	agent := exec.Command(os.Getenv("PH_BENCH_BIN"), "run", "--config", cfgPath, "--log-level", "INFO")
	agent.Stdout, agent.Stderr = lf, lf
	agent.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgFD(cgAgent), Pdeathsig: syscall.SIGKILL}
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
	}()
	if err := benchutil.WaitLog(agentLog, "transparent mode on", 10*time.Second); err != nil {
		return err
	}

	// redsocks behind an iptables REDIRECT, for the redsocks cgroup only.
	rsConf := filepath.Join(dir, "redsocks.conf")
	os.WriteFile(rsConf, []byte(fmt.Sprintf(`base { log_debug = off; log_info = off; log = "file:/dev/null"; daemon = off; redirector = iptables; }
redsocks { local_ip = 127.0.0.1; local_port = 12345; ip = 127.0.0.1; port = %s; type = http-connect; }
`, upPort)), 0o600)
	rs := exec.Command("redsocks", "-c", rsConf)
	rs.Stderr = os.Stderr
	rs.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := rs.Start(); err != nil {
		return fmt.Errorf("start redsocks: %w", err)
	}
	defer func() {
		rs.Process.Kill()
		rs.Wait()
	}()
	root, _ := bpf.Cgroup2Root()
	rel, _ := filepath.Rel(root, cgRed)
	if out, err := exec.Command("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", originIP, "--dport", "443",
		"-m", "cgroup", "--path", rel, "-j", "REDIRECT", "--to-ports", "12345").CombinedOutput(); err != nil {
		return fmt.Errorf("iptables (in the bench netns): %v\n%s", err, out)
	}
	// Not by connecting: a connection without an original destination
	// would make redsocks tunnel to itself, in a loop.
	if err := waitTCPListen(12345, 5*time.Second); err != nil {
		return err
	}

	abs := filepath.Join(dir, "abs.lua")
	os.WriteFile(abs, []byte(fmt.Sprintf("wrk.path = %q\nwrk.headers[\"Host\"] = %q\n", "http://"+originIP+"/bench", originIP)), 0o600)
	// hop is the process between wrk and the upstream (the agent, or
	// redsocks): its CPU time per request is the relay's own cost.
	type run struct {
		cg   string
		args []string
		hop  int
	}
	wrkArgs := func(extra ...string) []string {
		return append([]string{"-t", "2", "-c", strconv.Itoa(*conns), "-d", duration.String()}, extra...)
	}
	ap, rp := agent.Process.Pid, rs.Process.Pid
	explicit := run{"", wrkArgs("-s", abs, "http://127.0.0.1:18080"), ap}
	transHTTP := run{cgEBPF, wrkArgs("http://" + originIP + "/bench"), ap}
	redsocks := run{cgRed, wrkArgs("https://" + originIP + "/bench"), rp}
	transTLS := run{cgEBPF, wrkArgs("https://" + originIP + "/bench"), ap}

	pair := func(name, hopName string, base, cand run) error {
		var b, c []wrkRun
		for i := 0; i < *rounds; i++ {
			for _, x := range []struct {
				r   run
				out *[]wrkRun
			}{{base, &b}, {cand, &c}} {
				r, err := wrkCPU(x.r.cg, x.r.args, x.r.hop)
				if err != nil {
					return err
				}
				*x.out = append(*x.out, r)
			}
			fmt.Fprintf(os.Stderr, "%s round %d: baseline %.0f rps, transparent %.0f rps\n", name, i+1, b[i].rps, c[i].rps)
		}
		m := func(rs []wrkRun, f func(wrkRun) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return benchutil.Median(v)
		}
		rps := func(r wrkRun) float64 { return r.rps }
		fmt.Printf("| %s | %.0f | %.0f | %.2f× |\n", name, m(b, rps), m(c, rps), m(c, rps)/m(b, rps))
		us := func(f func(wrkRun) time.Duration) func(wrkRun) float64 {
			return func(r wrkRun) float64 { return float64(f(r)) / 1e3 }
		}
		hop := us(func(r wrkRun) time.Duration { return r.hop })
		rest := us(func(r wrkRun) time.Duration { return r.self + r.wrk })
		fmt.Printf("| … CPU per request of the hop (%s) | %.1fµs | %.1fµs | %.2f× |\n", hopName, m(b, hop), m(c, hop), m(c, hop)/m(b, hop))
		fmt.Printf("| … CPU per request of everything else (wrk, upstream, origin) | %.1fµs | %.1fµs | |\n", m(b, rest), m(c, rest))
		return nil
	}
	// Warm-up: one second of each.
	for _, r := range []run{explicit, transHTTP, redsocks, transTLS} {
		args := slices.Clone(r.args)
		args[5] = "1s"
		if _, _, _, err := wrk(r.cg, args); err != nil {
			return err
		}
	}
	if row("http") {
		if err := pair("plain HTTP requests/s (baseline: explicit proxy mode, same agent and upstream)", "agent / agent", explicit, transHTTP); err != nil {
			return err
		}
	}
	if !row("tunnel") {
		return nil
	}
	if err := pair("keep-alive HTTPS requests/s through a tunnel (baseline: redsocks + iptables REDIRECT, same upstream)", "redsocks / agent", redsocks, transTLS); err != nil {
		return err
	}
	return nil
}

// wrkRun is one wrk run: requests/s, and CPU time per request of the hop
// process, of this process (upstream proxy and origin) and of wrk.
type wrkRun struct {
	rps            float64
	hop, self, wrk time.Duration
}

func wrkCPU(cg string, args []string, hop int) (wrkRun, error) {
	self0, _ := cputime.Self()
	hop0, _ := cputime.Proc(hop)
	var r wrkRun
	var wrkCPU time.Duration
	var n int
	var err error
	// PH_BENCH_PERF=dir: a 3 s `perf record -g` of the hop process during
	// each run, into dir (for profiling; not part of the report).
	var perf *exec.Cmd
	if d := os.Getenv("PH_BENCH_PERF"); d != "" {
		perf = exec.Command("perf", "record", "-g", "-o", fmt.Sprintf("%s/perf-%d-%d.data", d, hop, time.Now().UnixNano()), "-p", strconv.Itoa(hop), "--", "sleep", "3")
		perf.Start()
	}
	r.rps, n, wrkCPU, err = wrk(cg, args)
	if perf != nil {
		perf.Wait()
	}
	if err != nil {
		return r, err
	}
	self1, _ := cputime.Self()
	hop1, _ := cputime.Proc(hop)
	if n > 0 {
		d := time.Duration(n)
		r.hop, r.self, r.wrk = (hop1-hop0)/d, (self1-self0)/d, wrkCPU/d
	}
	return r, nil
}

// wrk runs wrk in cgroup cg and returns its requests/s, its request count
// and the CPU time it used.
func wrk(cg string, args []string) (float64, int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "wrk", args...)
	if cg != "" {
		f, err := os.Open(cg)
		if err != nil {
			return 0, 0, 0, err
		}
		defer f.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("wrk %v: %w\n%s", args, err, out)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	w, err := benchutil.ParseWrk(string(out))
	if err != nil {
		return 0, 0, 0, err
	}
	if w.SocketErrorsLine != "" {
		fmt.Fprintf(os.Stderr, "wrk %v: %s\n", args, w.SocketErrorsLine)
	}
	if w.Non2xx > 0 {
		return 0, 0, 0, fmt.Errorf("wrk %v: %d non-2xx or 3xx responses", args, w.Non2xx)
	}
	return w.RPS, w.Requests, cpu, nil
}

// waitTCPListen waits until /proc/net/tcp shows a listener on port.
func waitTCPListen(port int, within time.Duration) error {
	want := fmt.Sprintf(":%04X 00000000:0000 0A", port)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/net/tcp")
		if bytes.Contains(b, []byte(want)) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on port %d after %s", port, within)
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: originIP},
		IPAddresses: []net.IP{net.ParseIP(originIP)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
