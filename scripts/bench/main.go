// Command bench measures proxy-hopper against its baselines in one run and
// prints a Markdown report (BENCHMARKS.md takes it verbatim).
//
//	go run ./scripts/bench -bin bin/proxy-hopper [-rounds 5 -duration 10s]
//
// Header-mode throughput: wrk (64 keep-alive connections) sends small
// requests to the agent, which forwards each through one of 64 upstream
// proxies (internal/miniproxy) to a local origin. Baseline: the same wrk
// sending the same requests to one of those upstream proxies directly
// (absolute-form). Rounds alternate direct and agent so that machine noise
// hits both; the report gives medians and the ratio.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
)

func main() {
	if err := benchutil.Isolate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type wrkResult struct {
	rps           float64
	p50, p99      time.Duration
	errors        int
	non2xx        int
	requestsTotal int
	// CPU time per request spent by wrk, by this process (origin and
	// upstream proxies) and by the agent process, during the run.
	cpuWrk, cpuSelf, cpuAgent time.Duration
}

func run() error {
	bin := flag.String("bin", "bin/proxy-hopper", "agent binary")
	rounds := flag.Int("rounds", 5, "rounds per measurement")
	dur := flag.Duration("duration", 10*time.Second, "wrk duration of one loaded run")
	conns := flag.Int("connections", 64, "wrk connections")
	upstreams := flag.Int("upstreams", 64, "upstream proxies in the pool")
	flag.BoolVar(&pin, "pin", false, "pin wrk, the upstream proxies and the origin to CPU 0, and the agent and the relay to CPU 1 (taskset; 2+ CPUs)")
	relayListen := flag.String("relay-listen", "", "internal: run as the bare TCP relay on this address")
	relayTo := flag.String("relay-to", "", "internal: where the bare TCP relay connects")
	flag.Parse()
	if *relayListen != "" {
		return relay(*relayListen, *relayTo)
	}
	if pin {
		if runtime.NumCPU() < 2 {
			return fmt.Errorf("-pin needs 2 CPUs or more")
		}
		// Every thread of this process (origin and upstream proxies), and
		// those it makes later, on CPU 0.
		if out, err := exec.Command("taskset", "-a", "-cp", "0", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
			return fmt.Errorf("taskset: %v: %s", err, out)
		}
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk not found (apt-get install wrk)")
	}
	dir, err := os.MkdirTemp("", "ph-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// Origin: small fixed response.
	body := bytes.Repeat([]byte("x"), 100)
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	go origin.Serve(ol)
	defer origin.Close()
	originURL := "http://" + ol.Addr().String()

	var ups []*miniproxy.Proxy
	for i := 0; i < *upstreams; i++ {
		p, err := miniproxy.Start(miniproxy.Options{})
		if err != nil {
			return err
		}
		defer p.Close()
		ups = append(ups, p)
	}
	var ipList []string
	for _, p := range ups {
		ipList = append(ipList, strconv.Quote(p.Addr()))
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
targets:
  - name: bench
    regex: '.*'
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 30s
    numRetries: 0
`, agentPort, strings.Join(ipList, ", "))
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	agentLog, _ := os.Create(filepath.Join(dir, "agent.log"))
	agent := onCPU(context.Background(), "1", *bin, "run", "--config", cfgPath)
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
		return err
	}

	// The floor of one more hop: a bare TCP relay process (no HTTP at all,
	// io.Copy both ways, which splices) between wrk and the same upstream.
	relayPort, err := freePort()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	relayAddr := fmt.Sprintf("127.0.0.1:%d", relayPort)
	relayCmd := onCPU(context.Background(), "1", self, "-relay-listen", relayAddr, "-relay-to", ups[0].Addr())
	relayCmd.Stderr = os.Stderr
	if err := relayCmd.Start(); err != nil {
		return fmt.Errorf("start relay: %w", err)
	}
	defer func() {
		relayCmd.Process.Kill()
		relayCmd.Wait()
	}()
	if err := benchutil.WaitListening(relayAddr, 10*time.Second); err != nil {
		return err
	}

	direct := filepath.Join(dir, "direct.lua")
	os.WriteFile(direct, []byte(fmt.Sprintf("wrk.path = %q\nwrk.headers[\"Host\"] = %q\n", originURL+"/bench", ol.Addr().String())), 0o600)
	directArgs := func(c int, d time.Duration) []string {
		return []string{"-t", threads(c), "-c", strconv.Itoa(c), "-d", d.String(), "--latency", "-s", direct, "http://" + ups[0].Addr()}
	}
	relayArgs := func(c int, d time.Duration) []string {
		return []string{"-t", threads(c), "-c", strconv.Itoa(c), "-d", d.String(), "--latency", "-s", direct, "http://" + relayAddr}
	}
	agentArgs := func(c int, d time.Duration) []string {
		return []string{"-t", threads(c), "-c", strconv.Itoa(c), "-d", d.String(), "--latency",
			"-H", "X-Proxy-Hopper-Target: " + originURL, "http://" + agentAddr + "/bench"}
	}
	// Warm up both paths.
	for _, a := range [][]string{directArgs(*conns, 2*time.Second), agentArgs(*conns, 2*time.Second)} {
		if _, err := wrk(a, 0); err != nil {
			return err
		}
	}
	measure := func(c int, d time.Duration) (dr, ar, rr []wrkResult, err error) {
		for i := 0; i < *rounds; i++ {
			r, err := wrk(directArgs(c, d), agent.Process.Pid)
			if err != nil {
				return nil, nil, nil, err
			}
			dr = append(dr, r)
			r, err = wrk(agentArgs(c, d), agent.Process.Pid)
			if err != nil {
				return nil, nil, nil, err
			}
			ar = append(ar, r)
			r, err = wrk(relayArgs(c, d), relayCmd.Process.Pid)
			if err != nil {
				return nil, nil, nil, err
			}
			rr = append(rr, r)
			fmt.Fprintf(os.Stderr, "c=%d round %d: direct %.0f rps p50 %s, agent %.0f rps p50 %s, relay %.0f rps p50 %s\n",
				c, i+1, dr[i].rps, dr[i].p50, ar[i].rps, ar[i].p50, rr[i].rps, rr[i].p50)
		}
		return dr, ar, rr, nil
	}
	loadedD, loadedA, loadedR, err := measure(*conns, *dur)
	if err != nil {
		return err
	}
	oneD, oneA, oneR, err := measure(1, *dur/2)
	if err != nil {
		return err
	}
	poolRows, err := poolBench(*rounds)
	if err != nil {
		return err
	}

	host, _ := os.Hostname()
	fmt.Printf("Measured %s on %s (%d CPUs, %s, %s/%s) with `make bench` (`go run ./scripts/bench`):\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("wrk %s per run, %d rounds, direct, agent and relay runs alternating; medians.\n", dur.String(), *rounds)
	if pin {
		fmt.Println("Pinned (-pin): wrk, the upstream proxies and the origin on CPU 0; the agent and the relay on CPU 1.")
	}
	fmt.Println()
	fmt.Println("| measurement | baseline (direct to upstream) | through agent (header mode) | ratio / added |")
	fmt.Println("|---|---|---|---|")
	row := func(name string, d, a, rl []wrkResult) {
		drps, arps := median(d, func(r wrkResult) float64 { return r.rps }), median(a, func(r wrkResult) float64 { return r.rps })
		dp50, ap50 := median(d, func(r wrkResult) float64 { return float64(r.p50) }), median(a, func(r wrkResult) float64 { return float64(r.p50) })
		dp99, ap99 := median(d, func(r wrkResult) float64 { return float64(r.p99) }), median(a, func(r wrkResult) float64 { return float64(r.p99) })
		fmt.Printf("| %s requests/s | %.0f | %.0f | %.2f× |\n", name, drps, arps, arps/drps)
		fmt.Printf("| %s p50 latency | %s | %s | %s |\n", name, dur2(dp50), dur2(ap50), signed(ap50-dp50))
		fmt.Printf("| %s p99 latency | %s | %s | %s |\n", name, dur2(dp99), dur2(ap99), signed(ap99-dp99))
		errs := 0
		for _, r := range append(append([]wrkResult{}, d...), a...) {
			errs += r.errors + r.non2xx
		}
		us := func(rs []wrkResult, f func(wrkResult) time.Duration) float64 {
			return median(rs, func(r wrkResult) float64 { return float64(f(r)) }) / 1e3
		}
		fmt.Printf("| %s CPU per request: upstream proxy + origin | %.1fµs | %.1fµs | |\n", name,
			us(d, func(r wrkResult) time.Duration { return r.cpuSelf }), us(a, func(r wrkResult) time.Duration { return r.cpuSelf }))
		fmt.Printf("| %s CPU per request: wrk | %.1fµs | %.1fµs | |\n", name,
			us(d, func(r wrkResult) time.Duration { return r.cpuWrk }), us(a, func(r wrkResult) time.Duration { return r.cpuWrk }))
		fmt.Printf("| %s CPU per request: agent | | %.1fµs | |\n", name, us(a, func(r wrkResult) time.Duration { return r.cpuAgent }))
		rrps := median(rl, func(r wrkResult) float64 { return r.rps })
		fmt.Printf("| %s requests/s, bare TCP relay in place of the agent (the floor of one more hop) | %.0f | %.0f | %.2f× |\n", name, drps, rrps, rrps/drps)
		fmt.Printf("| %s CPU per request: bare TCP relay | | %.1fµs | |\n", name, us(rl, func(r wrkResult) time.Duration { return r.cpuAgent }))
		fmt.Printf("| %s agent requests/s relative to the bare relay | | | %.2f× |\n", name, arps/rrps)
		if errs > 0 {
			fmt.Printf("| %s errors or non-2xx (all runs) | | | %d |\n", name, errs)
		}
	}
	row(fmt.Sprintf("%d connections:", *conns), loadedD, loadedA, loadedR)
	row("1 connection:", oneD, oneA, oneR)
	fmt.Println()
	fmt.Println("Pool (`go test -bench AcquireRelease ./pool/`, one target, 1000 IPs, minRequestInterval 0):")
	fmt.Println()
	fmt.Println("| benchmark | ns/op (median) | acquire+release per second |")
	fmt.Println("|---|---|---|")
	for _, r := range poolRows {
		fmt.Printf("| %s | %.1f | %.2fM |\n", r.name, r.ns, 1e3/r.ns)
	}
	return nil
}

// pin: see the -pin flag.
var pin bool

// onCPU is the command name args, on the given CPU when -pin is set
// (taskset execs the command: the PID is the command's).
func onCPU(ctx context.Context, cpu, name string, args ...string) *exec.Cmd {
	if !pin {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "taskset", append([]string{"-c", cpu, name}, args...)...)
}

// relay is the bare TCP relay: every accepted connection is joined to a new
// connection to `to`, bytes copied both ways with a plain read/write loop
// (cheaper than splice for small messages), nothing parsed.
func relay(listen, to string) error {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", to)
			if err != nil {
				return
			}
			defer u.Close()
			go func() {
				benchutil.CopyPlain(u, c)
				u.(*net.TCPConn).CloseWrite()
			}()
			benchutil.CopyPlain(c, u)
		}()
	}
}

func threads(c int) string {
	if c < 2 {
		return "1"
	}
	return "2"
}

func dur2(ns float64) string {
	return time.Duration(ns).Round(time.Microsecond).String()
}

func signed(ns float64) string {
	if ns < 0 {
		return "−" + dur2(-ns)
	}
	return "+" + dur2(ns)
}

func median[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	return benchutil.Median(v)
}

func wrk(args []string, agentPID int) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	self0, _ := cputime.Self()
	agent0, _ := cputime.Proc(agentPID)
	cmd := onCPU(ctx, "0", "wrk", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %v: %w\n%s", args, err, out)
	}
	self1, _ := cputime.Self()
	agent1, _ := cputime.Proc(agentPID)
	wrkCPU := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	w, err := benchutil.ParseWrk(string(out))
	if err != nil {
		return wrkResult{}, err
	}
	r := wrkResult{rps: w.RPS, p50: w.P50, p99: w.P99, errors: w.SocketErrors, non2xx: w.Non2xx, requestsTotal: w.Requests}
	if n := time.Duration(r.requestsTotal); n > 0 {
		r.cpuWrk, r.cpuSelf, r.cpuAgent = wrkCPU/n, (self1-self0)/n, (agent1-agent0)/n
	}
	return r, nil
}

type poolRow struct {
	name string
	ns   float64
}

func poolBench(count int) ([]poolRow, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "AcquireRelease", "-count", strconv.Itoa(count), "./pool/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("pool benchmark: %w\n%s", err, out)
	}
	samples := map[string][]float64{}
	var order []string
	re := regexp.MustCompile(`^(Benchmark\S+)\s+\d+\s+([\d.]+) ns/op`)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			if _, ok := samples[m[1]]; !ok {
				order = append(order, m[1])
			}
			samples[m[1]] = append(samples[m[1]], v)
		}
	}
	var rows []poolRow
	for _, name := range order {
		rows = append(rows, poolRow{name: name, ns: median(samples[name], func(f float64) float64 { return f })})
	}
	return rows, nil
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
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
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
