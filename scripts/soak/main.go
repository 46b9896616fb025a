// Command soak attacks a running agent the way hostile clients and hostile
// upstreams would, while good clients keep using it, and reports whether the
// good requests kept succeeding and whether the agent's memory, file
// descriptors and goroutines came back to their baseline afterwards.
//
//	make soak                       # or: go run ./scripts/soak -bin bin/proxy-hopper
//	go run ./scripts/soak -clients 1000 -duration 60s
//
// Everything is on loopback, in a private network namespace
// (scripts/isolated.sh). The clients are split into four roles, each from
// its own 127.x source addresses so the agent's per-address limits see
// them as separate clients:
//
//   - good: keep-alive header-mode GETs through a target of healthy
//     upstream proxies (the measure of service);
//   - silent: open a connection and never send a byte, again and again;
//   - endless head: send a request head that never ends;
//   - hostile upstream: requests for a target whose upstream proxy answers
//     with a head that never ends.
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
)

func main() {
	flag.Parse()
	if err := benchutil.Isolate(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

var (
	bin       = flag.String("bin", "bin/proxy-hopper", "agent binary")
	clients   = flag.Int("clients", 1000, "concurrent clients, all roles together")
	duration  = flag.Duration("duration", 60*time.Second, "length of the attack")
	settle    = flag.Duration("settle", 150*time.Second, "how long to wait, at most, for the agent to return to its baseline (an idle Go process collects garbage at least every 2 minutes)")
	calm      = flag.Duration("calm", 15*time.Second, "how long the good clients run alone first, for the baseline rate of good requests")
	upstreams = flag.Int("upstreams", 256, "healthy upstream proxies of the good clients' target")
)

// sample is the agent process's footprint at one moment.
type sample struct {
	rssKiB, fds, goroutines int
	// pooled counts the fds that are connections to the good target's
	// upstream proxies: the agent keeps idle ones for reuse by design, so
	// they are reported apart and bounded, not compared with the baseline.
	pooled int
	// heapMiB is the Go heap in use (go_memstats_heap_inuse_bytes): it
	// falls back when the attack ends, while RSS keeps the pages the
	// runtime has not yet returned to the kernel.
	heapMiB float64
}

func (s sample) String() string {
	return fmt.Sprintf("RSS %.1f MiB, heap %.1f MiB, %d fds (%d to upstreams), %d goroutines",
		float64(s.rssKiB)/1024, s.heapMiB, s.fds, s.pooled, s.goroutines)
}

func run() error {
	raiseNofile()
	dir, err := os.MkdirTemp("", "ph-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	origin, originURL, err := startOrigin()
	if err != nil {
		return err
	}
	defer origin.Close()
	var ips []string
	upstreamAddrs := map[string]bool{}
	for range *upstreams {
		p, err := miniproxy.Start(miniproxy.Options{})
		if err != nil {
			return err
		}
		defer p.Close()
		ips = append(ips, strconv.Quote(p.Addr()))
		upstreamAddrs[p.Addr()] = true
	}
	evil, err := startEndlessHeadServer("127.0.0.9:0")
	if err != nil {
		return err
	}
	defer evil.Close()

	port, mport := freePort(), freePort()
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  logLevel: WARNING
  probe: false
  allowDestinations: [127.0.0.0/8]
  metrics: true
  metricsPort: %d
targets:
  - name: good
    regex: '^http://127\.0\.0\.1:'
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 10s
    maxQueueLength: 2000
    numRetries: 1
  - name: hostile
    regex: '^http://127\.0\.0\.8:'
    ipList: [%q]
    minRequestInterval: 0
    maxQueueWait: 2s
    numRetries: 0
`, port, mport, strings.Join(ips, ", "), evil.Addr().String())
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	agent := exec.Command(*bin, "run", "--config", cfgPath)
	agent.Stdout, agent.Stderr = logFile, logFile
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer func() {
		agent.Process.Signal(os.Interrupt)
		agent.Wait()
	}()
	agentAddr := fmt.Sprintf("127.0.0.1:%d", port)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	for _, addr := range []string{agentAddr, fmt.Sprintf("127.0.0.1:%d", mport)} {
		if err := benchutil.WaitListening(addr, 10*time.Second); err != nil {
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("%w; agent log:\n%s", err, log)
		}
	}
	pid := agent.Process.Pid

	// Baseline: after a short warm-up of good requests, so connection
	// pools and lazily built state exist in both measurements.
	warm := newGood(agentAddr, originURL, 1)
	for range 200 {
		warm.once()
	}
	warm.close()
	time.Sleep(time.Second)
	base, err := measure(pid, metricsURL, upstreamAddrs)
	if err != nil {
		return err
	}
	fmt.Printf("baseline: %s\n", base)

	roles := [4]int{*clients * 7 / 10, *clients / 10, *clients / 10}
	roles[3] = *clients - roles[0] - roles[1] - roles[2]

	// Calm: the good clients alone, for the rate the attack is compared with.
	calmCtx, calmCancel := context.WithTimeout(context.Background(), *calm)
	var calmOK, calmFailed atomic.Int64
	var calmWG sync.WaitGroup
	for i := range roles[0] {
		src := &net.TCPAddr{IP: net.IPv4(127, 10, byte(1+i/250), byte(1+i%250))}
		calmWG.Add(1)
		go func() {
			defer calmWG.Done()
			goodClient(calmCtx, agentAddr, originURL, src, &calmOK, &calmFailed, nil)
		}()
	}
	calmWG.Wait()
	calmCancel()
	calmRate := float64(calmOK.Load()) / calm.Seconds()
	fmt.Printf("calm: %d good clients alone for %v: %d ok, %d failed (%.0f/s)\n",
		roles[0], *calm, calmOK.Load(), calmFailed.Load(), calmRate)

	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	var (
		wg                 sync.WaitGroup
		goodOK, goodFailed atomic.Int64
		silent, heads      atomic.Int64
		hostileAnswers     atomic.Int64
		lastGoodErr        atomic.Value
	)
	for role, n := range roles {
		for i := range n {
			src := &net.TCPAddr{IP: net.IPv4(127, byte(10+role), byte(1+i/250), byte(1+i%250))}
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch role {
				case 0:
					goodClient(ctx, agentAddr, originURL, src, &goodOK, &goodFailed, &lastGoodErr)
				case 1:
					for ctx.Err() == nil {
						silentSocket(ctx, src, agentAddr)
						silent.Add(1)
					}
				case 2:
					for ctx.Err() == nil {
						endlessHead(ctx, src, agentAddr)
						heads.Add(1)
					}
				case 3:
					for ctx.Err() == nil {
						if hostileRequest(ctx, src, agentAddr) {
							hostileAnswers.Add(1)
						}
					}
				}
			}()
		}
	}
	var peak sample
	tick := time.NewTicker(time.Second)
	start := time.Now()
sampling:
	for {
		select {
		case <-ctx.Done():
			break sampling
		case <-tick.C:
			s, err := measure(pid, metricsURL, upstreamAddrs)
			if err != nil {
				fmt.Printf("  %3.0fs: %v\n", time.Since(start).Seconds(), err)
				continue
			}
			peak.rssKiB = max(peak.rssKiB, s.rssKiB)
			peak.fds = max(peak.fds, s.fds)
			peak.goroutines = max(peak.goroutines, s.goroutines)
			peak.pooled = max(peak.pooled, s.pooled)
			peak.heapMiB = max(peak.heapMiB, s.heapMiB)
			if int(time.Since(start).Seconds())%10 == 0 {
				fmt.Printf("  %3.0fs: %s; good ok %d failed %d\n", time.Since(start).Seconds(), s, goodOK.Load(), goodFailed.Load())
			}
		}
	}
	tick.Stop()
	wg.Wait()

	// After: wait for the agent to drop what the attack left behind.
	var after sample
	deadline := time.Now().Add(*settle)
	for {
		after, err = measure(pid, metricsURL, upstreamAddrs)
		if err != nil {
			return err
		}
		back := after.fds-after.pooled <= base.fds-base.pooled+2 && after.goroutines <= base.goroutines+5 &&
			after.heapMiB <= heapBound(base)
		if back || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	settleTook := time.Since(deadline.Add(-*settle))
	if err := agent.Process.Signal(syscall.Signal(0)); err != nil {
		return fmt.Errorf("the agent died during the soak: %w", err)
	}

	total := goodOK.Load() + goodFailed.Load()
	fmt.Printf("\n%d clients for %v (good %d, silent %d, endless head %d, hostile upstream %d)\n\n",
		*clients, *duration, roles[0], roles[1], roles[2], roles[3])
	fmt.Println("| | RSS MiB | Go heap in use MiB | fds | of which to upstreams | goroutines |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, r := range []struct {
		name string
		s    sample
	}{{"baseline", base}, {"peak during the attack", peak}, {fmt.Sprintf("after (%.1f s)", settleTook.Seconds()), after}} {
		fmt.Printf("| %s | %.1f | %.1f | %d | %d | %d |\n", r.name, float64(r.s.rssKiB)/1024, r.s.heapMiB, r.s.fds, r.s.pooled, r.s.goroutines)
	}
	attackRate := float64(goodOK.Load()) / duration.Seconds()
	fmt.Printf("\ngood requests: %d ok, %d failed (%.2f%% ok, %.0f/s; %.2f× of the calm rate)\n", goodOK.Load(), goodFailed.Load(),
		100*float64(goodOK.Load())/float64(max(total, 1)), attackRate, attackRate/max(calmRate, 1))
	if e, ok := lastGoodErr.Load().(string); ok {
		fmt.Printf("last good-request error: %s\n", e)
	}
	fmt.Printf("silent sockets opened: %d; endless heads sent: %d; hostile-upstream requests answered: %d\n",
		silent.Load(), heads.Load(), hostileAnswers.Load())
	var problems []string
	if goodFailed.Load() > total/100 {
		problems = append(problems, fmt.Sprintf("%d of %d good requests failed", goodFailed.Load(), total))
	}
	if after.fds-after.pooled > base.fds-base.pooled+2 {
		problems = append(problems, fmt.Sprintf("fds other than upstream connections did not return to the baseline (%d → %d)",
			base.fds-base.pooled, after.fds-after.pooled))
	}
	if after.pooled > 2**upstreams {
		problems = append(problems, fmt.Sprintf("%d connections to %d upstreams left open (more than 2 each)", after.pooled, *upstreams))
	}
	if after.goroutines > base.goroutines+5 {
		problems = append(problems, fmt.Sprintf("goroutines did not return to the baseline (%d → %d)", base.goroutines, after.goroutines))
	}
	if after.heapMiB > heapBound(base) {
		problems = append(problems, fmt.Sprintf("Go heap in use did not return to the baseline (%.1f → %.1f MiB)", base.heapMiB, after.heapMiB))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// good is one keep-alive client of header mode.
type good struct {
	c         *http.Client
	agent     string
	originURL string
	src       *net.TCPAddr
}

func newGood(agentAddr, originURL string, _ int) *good {
	g := &good{agent: agentAddr, originURL: originURL}
	g.c = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: g.src, Timeout: 5 * time.Second}
			return d.DialContext(ctx, network, addr)
		},
	}}
	return g
}

func (g *good) once() error {
	req, _ := http.NewRequest("GET", "http://"+g.agent+"/soak", nil)
	req.Header.Set("X-Proxy-Hopper-Target", g.originURL)
	resp, err := g.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(b) != "soak ok" {
		return fmt.Errorf("status %d: %.100q", resp.StatusCode, b)
	}
	return nil
}

func (g *good) close() { g.c.CloseIdleConnections() }

// goodClient sends good requests from src until ctx ends, counting them;
// lastErr (when not nil) keeps the last failure.
func goodClient(ctx context.Context, agentAddr, originURL string, src *net.TCPAddr, ok, failed *atomic.Int64, lastErr *atomic.Value) {
	g := newGood(agentAddr, originURL, 1)
	g.src = src
	defer g.close()
	for ctx.Err() == nil {
		if err := g.once(); err != nil {
			failed.Add(1)
			if lastErr != nil {
				lastErr.Store(err.Error())
			}
		} else {
			ok.Add(1)
		}
	}
}

// silentSocket connects and sends nothing until the agent closes the
// connection (or the attack ends).
func silentSocket(ctx context.Context, src *net.TCPAddr, agent string) {
	d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", agent)
	if err != nil {
		sleep(ctx, 100*time.Millisecond)
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	io.Copy(io.Discard, c)
}

// endlessHead sends a request head that never ends, as fast as the agent
// reads it, until the agent gives up on it.
func endlessHead(ctx context.Context, src *net.TCPAddr, agent string) {
	d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", agent)
	if err != nil {
		sleep(ctx, 100*time.Millisecond)
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	go io.Copy(io.Discard, c)
	if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n"); err != nil {
		return
	}
	line := []byte("X-Filler: " + strings.Repeat("a", 1000) + "\r\n")
	for ctx.Err() == nil {
		c.SetWriteDeadline(time.Now().Add(15 * time.Second))
		if _, err := c.Write(line); err != nil {
			return
		}
	}
}

// hostileRequest sends one header-mode request for the target whose
// upstream answers with a head that never ends; it reports whether the
// agent answered at all.
func hostileRequest(ctx context.Context, src *net.TCPAddr, agent string) bool {
	d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", agent)
	if err != nil {
		sleep(ctx, 100*time.Millisecond)
		return false
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /h HTTP/1.1\r\nHost: x\r\nX-Proxy-Hopper-Target: http://127.0.0.8:80\r\nConnection: close\r\n\r\n")
	line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "HTTP/1.1 ")
}

// startEndlessHeadServer answers every connection with a status line and
// then header lines forever, as a hostile upstream proxy would.
func startEndlessHeadServer(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	line := []byte("X-Endless: " + strings.Repeat("b", 1000) + "\r\n")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				go io.Copy(io.Discard, c)
				if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\n"); err != nil {
					return
				}
				for {
					c.SetWriteDeadline(time.Now().Add(time.Minute))
					if _, err := c.Write(line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln, nil
}

func startOrigin() (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "soak ok")
	})}
	go srv.Serve(ln)
	return srv, "http://" + ln.Addr().String(), nil
}

// measure reads the agent's RSS and fd count from /proc and its goroutine
// count from its metrics.
func measure(pid int, metricsURL string, upstreams map[string]bool) (sample, error) {
	var s sample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = len(fds)
	peers := socketPeers(pid)
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); ok && upstreams[peers[strings.TrimSuffix(ino, "]")]] {
			s.pooled++
		}
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(metricsURL)
	if err != nil {
		return s, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return s, fmt.Errorf("metrics: %w", err)
	}
	for _, l := range bytes.Split(body, []byte("\n")) {
		if v, ok := bytes.CutPrefix(l, []byte("go_goroutines ")); ok {
			f, _ := strconv.ParseFloat(string(v), 64)
			s.goroutines = int(f)
		}
		if v, ok := bytes.CutPrefix(l, []byte("go_memstats_heap_inuse_bytes ")); ok {
			f, _ := strconv.ParseFloat(string(v), 64)
			s.heapMiB = f / (1 << 20)
		}
	}
	return s, nil
}

// heapBound is how much heap in use still counts as back to the baseline:
// what the baseline held plus 16 MiB of caches and freed spans.
func heapBound(base sample) float64 { return base.heapMiB + 16 }

// socketPeers maps the inode of every IPv4 TCP socket in the process's
// network namespace to its remote "ip:port" (/proc/PID/net/tcp).
func socketPeers(pid int) map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 10 {
			continue
		}
		ipPort := strings.SplitN(f[2], ":", 2)
		ip, err1 := strconv.ParseUint(ipPort[0], 16, 32)
		port, err2 := strconv.ParseUint(ipPort[1], 16, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		// The kernel prints the address as a host-order (little-endian) word.
		addr := net.IPv4(byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24))
		out[f[9]] = net.JoinHostPort(addr.String(), strconv.FormatUint(port, 10))
	}
	return out
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// raiseNofile lifts this process's soft fd limit to the hard one: the
// clients alone hold thousands of sockets.
func raiseNofile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
