// Command idlemem measures the agent's resident memory with many idle
// client connections, and prints a Markdown table (BENCHMARKS.md, "Idle
// connections: memory").
//
//	go build -o /tmp/idlemem ./scripts/idlemem && /tmp/idlemem -bin bin/proxy-hopper [-before bin/proxy-hopper-old] [-n 9000 -rounds 3]
//
// For each kind of idle connection it starts the agent (a fresh process
// per round), opens -n connections of that kind, waits for the agent to
// settle and reads its VmRSS from /proc:
//
//   - tunnel: a CONNECT tunnel, established (the upstream answered 200),
//     then silent both ways;
//   - keepalive: a connection that made one header-mode request (through
//     an upstream) and then stays open, silent;
//   - silent: a connection that never sends a byte.
//
// The upstream proxies are this process: one listener per IP of the
// target (127.10.x.y), answering CONNECT with 200 and holding the tunnel
// open, and absolute-form requests with a small 200. Clients connect from
// 16 loopback addresses (the agent's per-address limit is 4096). With
// -before the same rounds run against a second binary, alternating, so
// that both see the same machine. Everything stays on loopback; the
// agent needs 2n+256 fds (-n 10000: a hard limit of 20256 or more).
package main

import (
	"bufio"
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
	"syscall"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "idlemem:", err)
		os.Exit(1)
	}
}

var kinds = []string{"tunnel", "keepalive", "silent"}

func run() error {
	bin := flag.String("bin", "bin/proxy-hopper", "agent binary")
	before := flag.String("before", "", "agent binary to compare with (optional)")
	n := flag.Int("n", 10000, "idle connections per measurement")
	rounds := flag.Int("rounds", 3, "rounds per kind and binary")
	settle := flag.Duration("settle", 3*time.Second, "wait after the last connection before reading RSS")
	only := flag.String("kinds", strings.Join(kinds, ","), "kinds to measure")
	serveUps := flag.Int("serve-upstreams", 0, "internal: run as the upstream proxies, this many")
	flag.Parse()
	if *serveUps > 0 {
		return serveUpstreams(*serveUps)
	}
	if *n < 1 || *n > 60000 {
		return errors.New("-n must be from 1 to 60000")
	}
	// A tunnel takes two fds in the agent, one here and one in the
	// upstream process (which has a listener per IP as well).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if need := uint64(2**n + 256); lim.Max < need {
		return fmt.Errorf("-n %d needs an fd limit of %d in the agent, the hard limit is %d", *n, need, lim.Max)
	}
	lim.Cur = lim.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)

	ups, err := startUpstreamProcess(*n)
	if err != nil {
		return err
	}
	defer ups.close()

	bins := []string{*bin}
	if *before != "" {
		bins = []string{*before, *bin}
	}
	type key struct{ bin, kind string }
	res := map[key][]float64{}
	base := map[string][]float64{}
	for _, kind := range strings.Split(*only, ",") {
		for r := 0; r < *rounds; r++ {
			for _, b := range bins {
				empty, full, err := measure(b, kind, *n, ups, *settle)
				if err != nil {
					return fmt.Errorf("%s %s round %d: %w", b, kind, r+1, err)
				}
				fmt.Fprintf(os.Stderr, "%s %s round %d: RSS %.1f MiB idle, %.1f MiB with %d connections\n", filepath.Base(b), kind, r+1, empty, full, *n)
				res[key{b, kind}] = append(res[key{b, kind}], full)
				base[b] = append(base[b], empty)
			}
		}
	}

	fmt.Printf("Agent RSS (MiB) with %d idle client connections of each kind; median of %d rounds, each a fresh agent process. Go %s.\n\n", *n, *rounds, goVersion())
	if *before != "" {
		fmt.Println("| connections | before | after | after / before | after, per connection |")
		fmt.Println("|---|---|---|---|---|")
	} else {
		fmt.Println("| connections | RSS | per connection |")
		fmt.Println("|---|---|---|")
	}
	for _, kind := range strings.Split(*only, ",") {
		after := benchutil.Median(res[key{*bin, kind}])
		per := (after - benchutil.Median(base[*bin])) * 1024 / float64(*n)
		if *before != "" {
			b := benchutil.Median(res[key{*before, kind}])
			fmt.Printf("| %d %s | %.1f | %.1f | %.2f | %.1f KiB |\n", *n, kind, b, after, after/b, per)
		} else {
			fmt.Printf("| %d %s | %.1f | %.1f KiB |\n", *n, kind, after, per)
		}
	}
	fmt.Printf("\nRSS of the agent before any connection (median): ")
	for _, b := range bins {
		fmt.Printf("%s %.1f MiB; ", filepath.Base(b), benchutil.Median(base[b]))
	}
	fmt.Println()
	return nil
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// measure starts bin, opens n connections of kind and returns the agent's
// RSS before any and with all of them, in MiB.
func measure(bin, kind string, n int, ups *upstreams, settle time.Duration) (empty, full float64, err error) {
	dir, err := os.MkdirTemp("", "idlemem")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	port, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  logLevel: WARNING
  probe: false
  headerTimeout: 10m
  idleTimeout: 10m
  tunnelIdleTimeout: 10m
  shutdownTimeout: 1s
targets:
  - name: idle
    regex: '.*'
    ipList: [%s]
    minRequestInterval: 0
    maxQueueWait: 30s
    numRetries: 0
`, port, strings.Join(ups.addrs, ", "))
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return 0, 0, err
	}
	logf, _ := os.Create(filepath.Join(dir, "agent.log"))
	defer logf.Close()
	agent := exec.Command(bin, "run", "--config", cfgPath)
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		return 0, 0, fmt.Errorf("start agent: %w", err)
	}
	defer func() {
		_ = agent.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = agent.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = agent.Process.Kill()
			<-done
		}
	}()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := benchutil.WaitListening(addr, 20*time.Second); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
		return 0, 0, fmt.Errorf("%w: %s", err, b)
	}
	time.Sleep(settle)
	if empty, err = rssMiB(agent.Process.Pid); err != nil {
		return 0, 0, err
	}
	conns, err := open(addr, kind, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(settle)
	full, err = rssMiB(agent.Process.Pid)
	return empty, full, err
}

// open makes n idle connections of kind to the agent at addr, 64 at a
// time.
func open(addr, kind string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := openOne(addr, kind, i)
			if err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	out := conns[:0]
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	return out, <-errs
}

func openOne(addr, kind string, i int) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 3, byte(1+i%16))}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var status string
	switch kind {
	case "silent":
		return c, nil
	case "tunnel":
		fmt.Fprintf(c, "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
		status, err = readStatus(c, http.MethodConnect)
	case "keepalive":
		fmt.Fprintf(c, "GET /k HTTP/1.1\r\nHost: a\r\nX-Proxy-Hopper-Target: http://127.0.0.1:9\r\n\r\n")
		status, err = readStatus(c, http.MethodGet)
	default:
		err = fmt.Errorf("unknown kind %q", kind)
	}
	if err == nil && status != "200" {
		err = fmt.Errorf("agent answered %s", status)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// readStatus reads one response head and body (a small one) and returns
// its status code. The reader is sized to read nothing past the response.
func readStatus(c net.Conn, method string) (string, error) {
	resp, err := http.ReadResponse(bufio.NewReaderSize(oneByte{c}, 16), &http.Request{Method: method})
	if err != nil {
		return "", err
	}
	if method != http.MethodConnect {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return strconv.Itoa(resp.StatusCode), nil
}

// oneByte reads one byte at a time, so that a bufio.Reader on it never
// takes bytes beyond what the parser asked for.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:1]) }

// rssMiB is VmRSS of pid in MiB.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// upstreams is the process serving the stand-in upstream proxies.
type upstreams struct {
	addrs []string
	cmd   *exec.Cmd
}

// startUpstreamProcess runs this program as the upstream proxies (a
// process of its own: each has its own fd limit) and reads their
// addresses.
func startUpstreamProcess(n int) (*upstreams, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-serve-upstreams", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	u := &upstreams{cmd: cmd}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if sc.Text() == "ready" {
			return u, nil
		}
		u.addrs = append(u.addrs, `"`+sc.Text()+`"`)
	}
	u.close()
	return nil, errors.New("the upstream process ended before it was ready")
}

func (u *upstreams) close() {
	_ = u.cmd.Process.Kill()
	_ = u.cmd.Wait()
}

// serveUpstreams listens on n addresses 127.10.x.y, prints them and
// "ready", and serves until killed: CONNECT gets 200 and the tunnel is
// held open; other requests get a small 200, keep-alive.
func serveUpstreams(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	port := 0
	w := bufio.NewWriter(os.Stdout)
	for i := 0; i < n; i++ {
		ip := net.IPv4(127, 10, byte(i/250), byte(1+i%250))
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("upstream %d: %w", i, err)
		}
		if port == 0 {
			port = l.Addr().(*net.TCPAddr).Port
		}
		fmt.Fprintln(w, l.Addr().String())
		go serveUpstream(l)
	}
	fmt.Fprintln(w, "ready")
	if err := w.Flush(); err != nil {
		return err
	}
	select {}
}

func serveUpstream(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReaderSize(c, 1024)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if req.Method == http.MethodConnect {
					io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
					_, _ = io.Copy(io.Discard, br) // hold the tunnel open
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}()
	}
}
