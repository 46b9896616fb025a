package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// The client side of the byte-exact tests runs as this test binary,
// re-executed inside the test's netns and hooked cgroup.
func init() {
	if os.Getenv("PH_TRANSPARENT_HELPER") != "" {
		if err := transparentHelper(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

const (
	originIP    = "198.18.0.10"
	unmatchedIP = "198.18.0.11"
	excludedIP  = "198.18.0.12"
	up1, up2    = "198.18.0.2", "198.18.0.3"
	originIP6   = "2001:db8::10" // documentation prefix, only inside the test netns
)

// payload is the deterministic byte stream both ends of a byte-exact test
// generate from a seed.
func payload(seed uint64) io.Reader {
	return mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 'p', 'h'})
}

func payloadSum(seed uint64, n int64) string {
	h := sha256.New()
	if _, err := io.CopyN(h, payload(seed), n); err != nil {
		panic(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// transparentHelper is the client: PH_TRANSPARENT_HELPER=sha sends
// PH_UP bytes and reads PH_DOWN bytes on each of PH_CONNS connections and
// prints both hashes; =hold connects, prints "ready" and waits for stdin to
// close; =rst sends a little then resets the connection.
func transparentHelper() error {
	addr := os.Getenv("PH_ADDR")
	nup, _ := strconv.ParseInt(os.Getenv("PH_UP"), 10, 64)
	ndown, _ := strconv.ParseInt(os.Getenv("PH_DOWN"), 10, 64)
	conns, _ := strconv.Atoi(os.Getenv("PH_CONNS"))
	switch os.Getenv("PH_TRANSPARENT_HELPER") {
	case "loop":
		return loopHelper(addr)
	case "slow":
		return slowReader(addr, ndown)
	case "upflood":
		return upFlood(addr, nup)
	case "hold", "rst":
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := io.WriteString(c, "@HOLD\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ok\n" {
			return fmt.Errorf("hold reply %q: %v", line, err)
		}
		if os.Getenv("PH_TRANSPARENT_HELPER") == "rst" {
			if _, err := io.CopyN(c, payload(1), 256<<10); err != nil {
				return err
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			return c.Close()
		}
		fmt.Println("ready")
		_, _ = io.Copy(io.Discard, os.Stdin)
		return nil
	}
	var wg sync.WaitGroup
	out := make([]string, conns)
	errs := make([]error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = shaConn(addr, uint64(100+2*i), nup, ndown, os.Getenv("PH_HALFCLOSE") == "1")
		}()
	}
	wg.Wait()
	for i := range conns {
		if errs[i] != nil {
			return fmt.Errorf("conn %d: %w", i, errs[i])
		}
		fmt.Printf("conn %d %s\n", i, out[i])
	}
	return nil
}

// slowReader asks the origin for ndown bytes, reads nothing for 3 s, then
// reads them all and prints their hash.
func slowReader(addr string, ndown int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "@FLOOD %d\n", ndown); err != nil {
		return err
	}
	time.Sleep(3 * time.Second)
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return err
	}
	fmt.Printf("n=%d sha=%s\n", n, hex.EncodeToString(h.Sum(nil)))
	return nil
}

// upFlood sends nup bytes in 1 MiB writes to an origin that reads nothing
// for 2 s, prints how much it had written after 1.5 s, then the origin's
// hash of what it got.
func upFlood(addr string, nup int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "@SLOWUP %d\n", nup); err != nil {
		return err
	}
	var written atomic.Int64
	done := make(chan error, 1)
	go func() { done <- testenv.WriteCounted(c, io.LimitReader(payload(11), nup), 1<<20, &written) }()
	time.Sleep(1500 * time.Millisecond)
	stalled := written.Load()
	if err := <-done; err != nil {
		return err
	}
	sum, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the origin's hash: %w", err)
	}
	fmt.Printf("stalled=%d sha=%s", stalled, sum)
	return nil
}

// floodStalled is what the origin had written of its latest @FLOOD reply
// 2 s in (while the slow reader does not read).
var floodStalled atomic.Int64

// loopHelper makes one plain-HTTP request per new connection to addr until
// stdin closes, then prints "ok=N fail=M" and the first failure.
func loopHelper(addr string) error {
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	ok, fail, first := 0, 0, ""
	fmt.Println("ready")
	for i := 0; ; i++ {
		select {
		case <-stop:
			fmt.Printf("ok=%d fail=%d %s\n", ok, fail, first)
			return nil
		default:
		}
		resp, err := cl.Get(fmt.Sprintf("http://%s/loop%d", addr, i))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if err != nil {
			fail++
			if first == "" {
				first = err.Error()
			}
			continue
		}
		ok++
	}
}

func shaConn(addr string, seed uint64, nup, ndown int64, halfClose bool) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	hc := "full"
	if halfClose {
		hc = "half"
	}
	if _, err := fmt.Fprintf(c, "@SHA %d %d %d %s\n", nup, ndown, seed, hc); err != nil {
		return "", err
	}
	if _, err := io.CopyN(c, payload(seed), nup); err != nil {
		return "", fmt.Errorf("send: %w", err)
	}
	if halfClose { // the reply must still come
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return "", err
		}
	}
	br := bufio.NewReader(c)
	upSum, err := br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read upstream hash: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, br)
	if err != nil {
		return "", fmt.Errorf("receive: %w", err)
	}
	return fmt.Sprintf("up=%s down=%s n=%d", strings.TrimSpace(upSum), hex.EncodeToString(h.Sum(nil)), n), nil
}

// serveBytes is the origin of the byte-exact tests.
func serveBytes(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			switch {
			case len(f) == 1 && f[0] == "@HOLD":
				_, _ = io.WriteString(c, "ok\n")
				_, _ = io.Copy(io.Discard, br)
			case len(f) == 2 && f[0] == "@FLOOD":
				n, _ := strconv.ParseInt(f[1], 10, 64)
				var written atomic.Int64
				stop := time.AfterFunc(2*time.Second, func() { floodStalled.Store(written.Load()) })
				defer stop.Stop()
				_ = testenv.WriteCounted(c, io.LimitReader(payload(7), n), 64<<10, &written)
			case len(f) == 2 && f[0] == "@SLOWUP":
				n, _ := strconv.ParseInt(f[1], 10, 64)
				time.Sleep(2 * time.Second)
				h := sha256.New()
				if _, err := io.CopyN(h, br, n); err != nil {
					return
				}
				_, _ = fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
			case len(f) == 2 && f[0] == "@RST":
				n, _ := strconv.ParseInt(f[1], 10, 64)
				_, _ = io.CopyN(io.Discard, br, n)
				_ = c.(*net.TCPConn).SetLinger(0)
			case len(f) == 5 && f[0] == "@SHA":
				nup, _ := strconv.ParseInt(f[1], 10, 64)
				ndown, _ := strconv.ParseInt(f[2], 10, 64)
				seed, _ := strconv.ParseUint(f[3], 10, 64)
				h := sha256.New()
				if _, err := io.CopyN(h, br, nup); err != nil {
					return
				}
				if f[4] == "half" { // nothing more before the client's half-close
					if n, err := io.Copy(io.Discard, br); err != nil || n != 0 {
						return
					}
				}
				_, _ = fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
				_, _ = io.CopyN(c, payload(seed+1), ndown)
			}
		}()
	}
}

type e2eEnv struct {
	ns             *testenv.Netns
	bin            string
	clientCg       string
	agentCg        string
	clientCgFD     int
	agentCgFD      int
	caFile         string
	ups            []*testenv.Tinyproxy
	mu             sync.Mutex
	hits           []string // "path from"
	dir            string
	agentPort      int
	agentProcesses int
	pinDir         string // on bpffs, this test's own
	expectDisabled bool   // startAgent: transparent mode is meant to fail
}

func newE2EEnv(t *testing.T) *e2eEnv {
	t.Helper()
	testenv.RequireRoot(t)
	for _, p := range []string{"curl", "tinyproxy", "nsenter", "unshare"} {
		testenv.LookPath(t, p)
	}
	if err := bpf.Probe(); err != nil {
		t.Fatal(err)
	}
	e := &e2eEnv{dir: t.TempDir(), pinDir: fmt.Sprintf("/sys/fs/bpf/ph-test-%d", os.Getpid())}
	e.bin = buildAgent(t, e.dir)

	root, err := bpf.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	mkcg := func(prefix string) (string, int) {
		d, err := os.MkdirTemp(root, prefix)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			f.Close()
			// The processes in it are gone by now (cleanups run in reverse).
			for i := 0; i < 50; i++ {
				if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Errorf("cgroup %s left behind", d)
		})
		return d, int(f.Fd())
	}
	e.clientCg, e.clientCgFD = mkcg("ph-test-client-")
	e.agentCg, e.agentCgFD = mkcg("ph-test-agent-")
	// Whatever a pinned agent left on the test cgroups, detached before they go.
	t.Cleanup(func() {
		var ids []uint64
		for _, cg := range []string{e.clientCg, e.agentCg} {
			if id, err := bpf.CgroupID(cg); err == nil {
				ids = append(ids, id)
			}
		}
		if _, err := bpf.Detach(bpf.DetachOptions{PinDir: e.pinDir, Cgroups: ids}); err != nil {
			t.Errorf("clean pinned state: %v", err)
		}
		if _, err := os.Stat(e.pinDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", e.pinDir, err)
			os.RemoveAll(e.pinDir)
		}
	})

	e.ns = testenv.NewNetns(t)
	e.ns.AddAddrs(t, up1+"/32", up2+"/32", originIP+"/32", unmatchedIP+"/32", excludedIP+"/32", originIP6+"/128")

	// Origins.
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, _, _ := net.SplitHostPort(r.RemoteAddr)
		e.mu.Lock()
		e.hits = append(e.hits, r.URL.Path+" "+from)
		e.mu.Unlock()
		fmt.Fprintf(w, "from=%s path=%s\n", from, r.URL.Path)
	})
	for _, a := range []string{originIP + ":80", originIP + ":8080", unmatchedIP + ":80", excludedIP + ":80"} {
		srv := &http.Server{Handler: h}
		go srv.Serve(e.ns.Listen(t, a))
		t.Cleanup(func() { srv.Close() })
	}
	cert, caPEM := testCert(t)
	e.caFile = filepath.Join(e.dir, "ca.pem")
	if err := os.WriteFile(e.caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	tsrv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go tsrv.ServeTLS(e.ns.Listen(t, originIP+":443"), "", "")
	t.Cleanup(func() { tsrv.Close() })
	go serveBytes(e.ns.Listen(t, originIP+":9000"))
	go serveBytes(e.ns.Listen(t, unmatchedIP+":9000"))
	go serveBytes(e.ns.Listen(t, "["+originIP6+"]:9000"))

	for _, ip := range []string{up1, up2} {
		e.ups = append(e.ups, testenv.StartTinyproxy(t, ip, testenv.TinyproxyOptions{
			Netns: e.ns, Hosts: originIP + " origin.test\n", Extra: "Bind " + ip + "\n",
		}))
	}
	return e
}

// buildAgent builds the agent binary into dir (a test's own temporary
// directory, so each test has its binary for as long as it runs; the go
// build cache makes the second build a link).
func buildAgent(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "proxy-hopper")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "github.com/proxy-hopper/proxy-hopper/cmd/proxy-hopper")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	return bin
}

func testCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	return testCertFor(t, []string{"origin.test"}, nil)
}

// testCertFor is a self-signed certificate for names and ips (IP
// literals), which is its own CA: the PEM a client or target trusts.
func testCertFor(t *testing.T, names, ips []string) (tls.Certificate, []byte) {
	t.Helper()
	var addrs []net.IP
	for _, ip := range ips {
		addrs = append(addrs, net.ParseIP(ip))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, IPAddresses: addrs, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

type agentProc struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

// startAgent starts an agent in the agent cgroup; extra are more keys of
// transparent.local.
func (e *e2eEnv) startAgent(t *testing.T, sockmap bool, extra ...string) *agentProc {
	t.Helper()
	e.agentProcesses++
	cfg := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  logLevel: DEBUG
  probe: false
  shutdownTimeout: 10s
targets:
  - name: origin
    regex: '^(http://198\.18\.0\.1[02](:80)?/|origin\.test:443$|198\.18\.0\.10:9000$)'
    ipList: ["%s:8888", "%s:8888"]
    minRequestInterval: 1ms
transparent:
  unmatched: direct
  local:
    enabled: true
    cgroups: [%q, %q]
    ports: [80, 443, 9000]
    excludeCidrs: [%s/32]
    sockmap: %v
    pinDir: %s
`, 18080+e.agentProcesses, up1, up2, e.clientCg, e.agentCg, excludedIP, sockmap, e.pinDir)
	for _, x := range extra {
		cfg += "    " + x + "\n"
	}
	return e.launch(t, cfg)
}

// launch starts an agent on cfg (its server.port taken from
// e.agentProcesses, which the caller has counted up) in the agent cgroup,
// and waits for its transparent mode.
func (e *e2eEnv) launch(t *testing.T, cfg string) *agentProc {
	t.Helper()
	path := filepath.Join(e.dir, fmt.Sprintf("agent-%d.yaml", e.agentProcesses))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{log: filepath.Join(e.dir, fmt.Sprintf("agent-%d.log", e.agentProcesses)), done: make(chan error, 1)}
	lf, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	a.cmd = e.ns.Command(e.bin, "run", "--config", path)
	a.cmd.Stdout, a.cmd.Stderr = lf, lf
	a.cmd.Env = []string{"PATH=/usr/bin:/bin"}
	a.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.agentCgFD}
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
		if strings.Contains(string(b), "transparent mode on") {
			return a
		}
		if e.expectDisabled && strings.Contains(string(b), "transparent mode disabled") {
			return a
		}
		if strings.Contains(string(b), "transparent mode disabled") || time.Now().After(deadline) {
			t.Fatalf("agent did not start transparent mode:\n%s", b)
		}
		select {
		case err := <-a.done:
			a.done <- err // for the cleanup, which waits on it
			t.Fatalf("agent exited: %v\n%s", err, b)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// run runs a program in the test netns, in the hooked client cgroup or not,
// with no proxy settings in its environment.
func (e *e2eEnv) run(t *testing.T, hooked bool, env []string, name string, args ...string) string {
	t.Helper()
	out, err := e.try(hooked, env, name, args...)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, ee.Stderr)
		}
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

// try is run for a program that may fail: its output and exit error
// (an *exec.ExitError carrying its stderr).
func (e *e2eEnv) try(hooked bool, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := e.ns.Command(name, args...)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	if hooked {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.clientCgFD}
	}
	out, err := cmd.Output()
	return string(out), err
}

func (e *e2eEnv) curl(t *testing.T, hooked bool, args ...string) string {
	t.Helper()
	return e.run(t, hooked, nil, "curl", append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, args...)...)
}

// fromOf extracts where the origin saw each response come from.
func fromOf(body string) []string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if f, ok := strings.CutPrefix(l, "from="); ok {
			out = append(out, strings.Fields(f)[0])
		}
	}
	return out
}

func isUpstream(ip string) bool { return ip == up1 || ip == up2 }

func (e *e2eEnv) upstreamLogs(t *testing.T) string {
	var b strings.Builder
	for _, u := range e.ups {
		b.WriteString(strings.Join(u.Requests(t), "\n"))
		b.WriteString("\n")
	}
	return b.String()
}

// agentMaps opens the BPF maps the agent process holds, by name.
func agentMaps(t *testing.T, pid int) map[string]*ebpf.Map {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fdinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*ebpf.Map{}
	for _, fd := range fds {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "map_id:"); ok {
				id, _ := strconv.Atoi(strings.TrimSpace(v))
				m, err := ebpf.NewMapFromID(ebpf.MapID(id))
				if err != nil {
					continue
				}
				info, err := m.Info()
				if err != nil || out[info.Name] != nil {
					m.Close()
					continue
				}
				out[info.Name] = m
				t.Cleanup(func() { m.Close() })
			}
		}
	}
	return out
}

func entries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	if m == nil {
		t.Fatal("map not found in the agent")
	}
	n, err := bpf.MapEntries(m)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func waitEntries(t *testing.T, m *ebpf.Map, want int) {
	t.Helper()
	testenv.Eventually(t, 3*time.Second, func() error {
		if n := entries(t, m); n != want {
			return fmt.Errorf("map has %d entries, want %d", n, want)
		}
		return nil
	})
}

func attachedTo(t *testing.T, cg string) int {
	t.Helper()
	f, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps} {
		qr, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatal(err)
		}
		n += len(qr.Programs)
	}
	return n
}

// byteExact runs the sha helper and checks every connection's hashes.
// Through an upstream tunnel (tinyproxy closes both ways on a half-close,
// so no half-close there), and direct (unmatched) with a half-close.
func (e *e2eEnv) byteExact(t *testing.T, conns int, nup, ndown int64) {
	t.Helper()
	e.byteExactTo(t, originIP+":9000", false, conns, nup, ndown)
	e.byteExactTo(t, unmatchedIP+":9000", true, conns, nup, ndown)
}

func (e *e2eEnv) byteExactTo(t *testing.T, addr string, halfClose bool, conns int, nup, ndown int64) {
	t.Helper()
	hc := "PH_HALFCLOSE=0"
	if halfClose {
		hc = "PH_HALFCLOSE=1"
	}
	out := e.run(t, true, []string{"PH_TRANSPARENT_HELPER=sha", "PH_ADDR=" + addr, hc,
		fmt.Sprintf("PH_UP=%d", nup), fmt.Sprintf("PH_DOWN=%d", ndown), fmt.Sprintf("PH_CONNS=%d", conns)}, os.Args[0])
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != conns {
		t.Fatalf("helper printed %d lines, want %d:\n%s", len(lines), conns, out)
	}
	for i, l := range lines {
		seed := uint64(100 + 2*i)
		want := fmt.Sprintf("conn %d up=%s down=%s n=%d", i, payloadSum(seed, nup), payloadSum(seed+1, ndown), ndown)
		if l != want {
			t.Errorf("got  %s\nwant %s", l, want)
		}
	}
}

// fastPath checks the sockmap state while a redirected connection is open
// (both ends in the SOCKHASH when on, none when off), that resets by either
// side are survived, and that no map entry outlives the connections.
func (e *e2eEnv) fastPath(t *testing.T, a *agentProc, on bool) {
	t.Helper()
	maps := agentMaps(t, a.cmd.Process.Pid)
	hold := exec.Command("nsenter", "--net="+e.ns.Path, os.Args[0])
	hold.Env = []string{"PH_TRANSPARENT_HELPER=hold", "PH_ADDR=" + originIP + ":9000"}
	hold.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.clientCgFD}
	stdin, _ := hold.StdinPipe()
	stdout, _ := hold.StdoutPipe()
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		stdin.Close()
		hold.Wait()
		t.Fatalf("hold helper said %q", line)
	}
	want := 0
	if on {
		want = 1
	}
	for _, m := range []string{"ph_sockhash", "ph_agent_socks", "ph_queued"} {
		if n := entries(t, maps[m]); n != want {
			t.Errorf("%s entries with an open connection = %d, want %d", m, n, want)
		}
	}
	if on { // the helper's first line went over the fast path, and was read
		var k, v []byte
		it := maps["ph_queued"].Iterate()
		for it.Next(&k, &v) {
			in, out := binary.LittleEndian.Uint64(v[0:8]), binary.LittleEndian.Uint64(v[8:16])
			if in == 0 || out != in {
				t.Errorf("ph_queued entry in=%d out=%d: want bytes redirected, and every one read", in, out)
			}
		}
	}
	if n := entries(t, maps["ph_orig_addr"]); n != 0 {
		t.Errorf("ph_orig_addr entries after accept = %d, want 0", n)
	}
	stdin.Close()
	if err := hold.Wait(); err != nil {
		t.Fatal(err)
	}
	// Abrupt close by the client, then by the origin.
	e.run(t, true, []string{"PH_TRANSPARENT_HELPER=rst", "PH_ADDR=" + originIP + ":9000"}, os.Args[0])
	c, err := e.ns.Dial(originIP+":9000", time.Second) // outside the cgroup: direct, as a control
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	out := e.run(t, true, nil, "sh", "-c", `printf '@RST 10\n0123456789' | curl -sS --max-time 5 telnet://`+originIP+`:9000 ; echo rc=$?`)
	if !strings.Contains(out, "rc=") {
		t.Fatalf("reset by origin: %q", out)
	}
	e.byteExact(t, 1, 1<<10, 1<<10) // still serving after the resets
	for _, m := range []string{"ph_sockhash", "ph_agent_socks", "ph_orig_addr", "ph_queued"} {
		waitEntries(t, maps[m], 0)
	}
}

// slowClient: a client that stops reading a download through the agent
// holds the origin back after a few MiB (the fast path's queue limit and the
// TCP buffers of the hops), not after the whole reply, and then gets every
// byte.
func (e *e2eEnv) slowClient(t *testing.T) {
	t.Helper()
	const n = 512 << 20
	floodStalled.Store(-1)
	out := e.run(t, true, []string{"PH_TRANSPARENT_HELPER=slow", "PH_ADDR=" + originIP + ":9000", fmt.Sprintf("PH_DOWN=%d", n)}, os.Args[0])
	if want := fmt.Sprintf("n=%d sha=%s\n", n, payloadSum(7, n)); out != want {
		t.Fatalf("slow reader got %q, want %q", out, want)
	}
	stalled := floodStalled.Load()
	if stalled < 0 { // the origin was done before its 2 s sample
		t.Fatalf("the origin wrote all %d MiB within 2 s while the client did not read: the agent buffered it", n>>20)
	}
	t.Logf("the origin wrote %.1f MiB while the client did not read", float64(stalled)/(1<<20))
	if stalled > 96<<20 {
		t.Fatalf("the origin wrote %d MiB while the client did not read: the agent buffered it", stalled>>20)
	}
}

// slowUpstream: a client uploading in 1 MiB writes through the agent to an
// origin that stalls is held back after a few MiB (the fast path's queue
// limit at the agent, then TCP's buffers along the path), not allowed to
// pile its upload into the agent's receive queue; and every byte arrives in
// order.
func (e *e2eEnv) slowUpstream(t *testing.T) {
	t.Helper()
	const n = 512 << 20
	out := e.run(t, true, []string{"PH_TRANSPARENT_HELPER=upflood", "PH_ADDR=" + originIP + ":9000", fmt.Sprintf("PH_UP=%d", n)}, os.Args[0])
	var stalled int64
	var sum string
	if _, err := fmt.Sscanf(out, "stalled=%d sha=%s", &stalled, &sum); err != nil {
		t.Fatalf("upload helper said %q: %v", out, err)
	}
	if want := payloadSum(11, n); sum != want {
		t.Fatalf("the origin got a different upload: %s, want %s", sum, want)
	}
	t.Logf("the client wrote %.1f MiB while the origin did not read", float64(stalled)/(1<<20))
	if stalled > 96<<20 {
		t.Fatalf("the client wrote %d MiB while the origin did not read: the agent let it pile up", stalled>>20)
	}
}

func TestTransparentLocal(t *testing.T) {
	start := time.Now()
	e := newE2EEnv(t)
	t.Logf("setup %s", time.Since(start))
	a := e.startAgent(t, true)

	t.Run("RotationAcrossUpstreams", func(t *testing.T) {
		var froms []string
		for i := range 4 {
			froms = append(froms, fromOf(e.curl(t, true, fmt.Sprintf("http://%s/r%d", originIP, i)))...)
		}
		seen := map[string]bool{}
		for _, f := range froms {
			if !isUpstream(f) {
				t.Fatalf("request reached the origin from %s, not an upstream (%v)", f, froms)
			}
			seen[f] = true
		}
		if len(seen) != 2 {
			t.Errorf("4 requests used upstreams %v, want both", froms)
		}
		logs := e.upstreamLogs(t)
		for i := range 4 {
			if !strings.Contains(logs, fmt.Sprintf("GET http://%s/r%d", originIP, i)) {
				t.Errorf("upstream logs miss request r%d:\n%s", i, logs)
			}
		}
	})

	t.Run("KeepAliveRotatesPerRequest", func(t *testing.T) {
		out := e.curl(t, true, "-w", "connects=%{num_connects}\n", "http://"+originIP+"/k1", "http://"+originIP+"/k2")
		froms := fromOf(out)
		if len(froms) != 2 || froms[0] == froms[1] || !isUpstream(froms[0]) || !isUpstream(froms[1]) {
			t.Errorf("keep-alive requests came from %v, want two different upstreams\n%s", froms, out)
		}
		if !strings.Contains(out, "connects=1\n") || !strings.Contains(out, "connects=0\n") {
			t.Errorf("curl did not reuse its connection:\n%s", out)
		}
	})

	t.Run("HTTPSMatchedBySNI", func(t *testing.T) {
		out := e.curl(t, true, "--cacert", e.caFile, "--resolve", "origin.test:443:"+originIP, "https://origin.test/s")
		if f := fromOf(out); len(f) != 1 || !isUpstream(f[0]) {
			t.Errorf("https response %q, want it via an upstream", out)
		}
		if logs := e.upstreamLogs(t); !strings.Contains(logs, "CONNECT origin.test:443") {
			t.Errorf("no CONNECT origin.test:443 in upstream logs:\n%s", logs)
		}
	})

	direct := func(t *testing.T, hooked bool, url string) {
		t.Helper()
		out := e.curl(t, hooked, url)
		if f := fromOf(out); len(f) != 1 || isUpstream(f[0]) {
			t.Errorf("%s: got %q, want it direct", url, out)
		}
	}
	t.Run("ExcludedPortGoesDirect", func(t *testing.T) { direct(t, true, "http://"+originIP+":8080/p") })
	t.Run("ExcludedCIDRGoesDirect", func(t *testing.T) { direct(t, true, "http://"+excludedIP+"/c") })
	t.Run("OutsideCgroupUntouched", func(t *testing.T) { direct(t, false, "http://"+originIP+"/o") })
	t.Run("AgentOwnConnectionsNotLooped", func(t *testing.T) {
		// Unmatched + direct: the agent, itself in a hooked cgroup, dials
		// the original destination; without its mark that would loop.
		e.mu.Lock()
		before := len(e.hits)
		e.mu.Unlock()
		direct(t, true, "http://"+unmatchedIP+"/u")
		e.mu.Lock()
		defer e.mu.Unlock()
		if got := len(e.hits) - before; got != 1 {
			t.Errorf("origin got %d requests, want 1", got)
		}
	})
	t.Run("SockmapOnByteExact", func(t *testing.T) {
		e.byteExact(t, 1, 32<<20, 32<<20)
		e.byteExact(t, 16, 1<<20, 1<<20)
		e.fastPath(t, a, true)
		e.slowClient(t)
		e.slowUpstream(t)
	})
	t.Run("CleanShutdownLeavesNothing", func(t *testing.T) {
		// An upload in flight, with bytes queued at the agent's socket by
		// the fast path (the origin stalls), survives the shutdown: the
		// fast path's maps stay until the connections are drained.
		const n = 64 << 20
		up := e.ns.Command(os.Args[0])
		up.Env = []string{"PH_TRANSPARENT_HELPER=upflood", "PH_ADDR=" + originIP + ":9000", fmt.Sprintf("PH_UP=%d", n)}
		up.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.clientCgFD}
		var upOut bytes.Buffer
		up.Stdout = &upOut
		if err := up.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond)
		if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := up.Wait(); err != nil {
			t.Fatalf("upload across the shutdown: %v\n%s", err, upOut.String())
		}
		if want := "sha=" + payloadSum(11, n) + "\n"; !strings.HasSuffix(upOut.String(), want) {
			t.Fatalf("upload across the shutdown: %q, want the origin's hash %s", upOut.String(), want)
		}
		select {
		case err := <-a.done:
			a.done <- err
			if err != nil {
				t.Fatalf("agent exit: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("agent did not stop")
		}
		for _, cg := range []string{e.clientCg, e.agentCg} {
			if n := attachedTo(t, cg); n != 0 {
				t.Errorf("%d programs still attached to %s", n, cg)
			}
		}
		direct(t, true, "http://"+originIP+"/after-stop")
	})

	b := e.startAgent(t, false)
	t.Run("SockmapOffByteExact", func(t *testing.T) {
		e.byteExact(t, 1, 32<<20, 32<<20)
		e.byteExact(t, 16, 1<<20, 1<<20)
		e.fastPath(t, b, false)
	})
	t.Run("Kill9FailsOpen", func(t *testing.T) {
		if f := fromOf(e.curl(t, true, "http://"+originIP+"/before-kill")); len(f) != 1 || !isUpstream(f[0]) {
			t.Fatalf("before kill: %v, want via an upstream", f)
		}
		if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err := <-b.done
		b.done <- err
		for _, cg := range []string{e.clientCg, e.agentCg} {
			if n := attachedTo(t, cg); n != 0 {
				t.Errorf("%d programs still attached to %s after kill -9", n, cg)
			}
		}
		direct(t, true, "http://"+originIP+"/after-kill")
	})
	t.Run("IPv6Connect6", func(t *testing.T) {
		// Unmatched, so the agent dials the origin itself; its log shows it
		// got the IPv6 original destination from the redirected connection.
		a6 := e.startAgent(t, true)
		e.byteExactTo(t, "["+originIP6+"]:9000", true, 2, 1<<20, 1<<20)
		e.agentLogContains(t, "orig=["+originIP6+"]:9000")
		a6.stop(t, syscall.SIGTERM)
	})
	t.Run("PinnedRestartUpgradeDetach", func(t *testing.T) { e.pinned(t) })
	t.Logf("total %s", time.Since(start))
}

func (e *e2eEnv) agentLogContains(t *testing.T, want string) {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("agent-%d.log", e.agentProcesses)))
	if !strings.Contains(string(b), want) {
		t.Errorf("agent log has no %q:\n%s", want, b)
	}
}

func (a *agentProc) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := a.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		a.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop")
	}
}

// pinned: agent 1 installs the pinned redirect; agent 2 takes it over
// with link.Update while a client keeps connecting, and agent 1 stops:
// no request fails. With no agent running, the redirect stays and connects
// are refused. `bpf status` shows it, `bpf detach` removes all of it.
func (e *e2eEnv) pinned(t *testing.T) {
	p1 := e.startAgent(t, true, "pinned: true")
	e.agentLogContains(t, "installed=true attached=6")
	if f := fromOf(e.curl(t, true, "http://"+originIP+"/pinned-1")); len(f) != 1 || !isUpstream(f[0]) {
		t.Fatalf("pinned agent 1: %v, want via an upstream", f)
	}

	loop := exec.Command("nsenter", "--net="+e.ns.Path, os.Args[0])
	t.Cleanup(func() {
		if loop.ProcessState == nil && loop.Process != nil {
			loop.Process.Kill()
			loop.Wait()
		}
	})
	loop.Env = []string{"PH_TRANSPARENT_HELPER=loop", "PH_ADDR=" + originIP}
	loop.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.clientCgFD}
	stdin, _ := loop.StdinPipe()
	stdout, _ := loop.StdoutPipe()
	if err := loop.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stdout)
	if line, _ := br.ReadString('\n'); line != "ready\n" {
		stdin.Close()
		loop.Wait()
		t.Fatalf("loop helper said %q", line)
	}
	time.Sleep(200 * time.Millisecond)
	p2 := e.startAgent(t, true, "pinned: true")
	e.agentLogContains(t, "installed=false attached=0 updated=6 removed=0")
	time.Sleep(200 * time.Millisecond)
	p1.stop(t, syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond) // served by agent 2 alone
	stdin.Close()
	res, _ := br.ReadString('\n')
	if err := loop.Wait(); err != nil {
		t.Fatal(err)
	}
	var ok, fail int
	fmt.Sscanf(res, "ok=%d fail=%d", &ok, &fail)
	if fail != 0 || ok < 10 {
		t.Errorf("requests across the upgrade: %s", res)
	}
	t.Logf("across the upgrade: %s", strings.TrimSpace(res))
	for _, cg := range []string{e.clientCg, e.agentCg} {
		if n := attachedTo(t, cg); n != 3 {
			t.Errorf("%d programs on %s after the upgrade, want 3 (updated, not added)", n, cg)
		}
	}

	// No agent: the redirect stays, and the agent's port refuses.
	p2.stop(t, syscall.SIGTERM)
	if n := attachedTo(t, e.clientCg); n != 3 {
		t.Errorf("%d programs on the client cgroup with no agent, want 3 (pinned)", n)
	}
	cmd := e.ns.Command("curl", "-sS", "--max-time", "5", "--noproxy", "", "http://"+originIP+"/no-agent")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.clientCgFD}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("with no agent: curl %v, want exit 7 (connection refused)\n%s", err, out)
	}

	// Agent 3 picks the pinned state up after the gap.
	p3 := e.startAgent(t, false, "pinned: true")
	e.agentLogContains(t, "updated=6")
	if f := fromOf(e.curl(t, true, "http://"+originIP+"/pinned-3")); len(f) != 1 || !isUpstream(f[0]) {
		t.Fatalf("pinned agent 3: %v, want via an upstream", f)
	}
	p3.stop(t, syscall.SIGKILL)

	// An unpinned agent does not start over the pinned redirect.
	e.expectDisabled = true
	u := e.startAgent(t, true)
	e.expectDisabled = false
	e.agentLogContains(t, "pinned state exists")
	u.stop(t, syscall.SIGTERM)
	if n := attachedTo(t, e.clientCg); n != 3 {
		t.Errorf("%d programs on the client cgroup after the unpinned agent, want the 3 pinned", n)
	}

	status := e.run(t, false, nil, e.bin, "bpf", "status", "--pin-dir", e.pinDir)
	for _, cg := range []string{e.clientCg, e.agentCg} {
		id, err := bpf.CgroupID(cg)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			fmt.Sprintf("pinned: %s/links/cgroup-%d-connect4\n", e.pinDir, id),
			fmt.Sprintf("ph_connect6 on cgroup id %d (CGroupInet6Connect)\n", id),
			"pinned: " + e.pinDir + "/maps/ph_orig_addr\n",
		} {
			if !strings.Contains(status, want) {
				t.Errorf("bpf status misses %q:\n%s", want, status)
			}
		}
	}
	out2 := e.run(t, false, nil, e.bin, "bpf", "detach", "--pin-dir", e.pinDir, "--cgroup", e.clientCg, "--cgroup", e.agentCg)
	if out2 != "detached 6 link(s)\n" {
		t.Errorf("bpf detach: %q", out2)
	}
	for _, cg := range []string{e.clientCg, e.agentCg} {
		if n := attachedTo(t, cg); n != 0 {
			t.Errorf("%d programs on %s after bpf detach", n, cg)
		}
	}
	if _, err := os.Stat(e.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after bpf detach: %v", e.pinDir, err)
	}
	atts, pins, err := bpf.StatusOf(e.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		for _, cg := range []string{e.clientCg, e.agentCg} {
			if id, _ := bpf.CgroupID(cg); a.CgroupID == id {
				t.Errorf("still attached after bpf detach: %s", a)
			}
		}
	}
	if len(pins) != 0 {
		t.Errorf("still pinned after bpf detach: %v", pins)
	}
	out = []byte(e.curl(t, true, "http://"+originIP+"/after-detach"))
	if f := fromOf(string(out)); len(f) != 1 || isUpstream(f[0]) {
		t.Errorf("after detach: %q, want direct", out)
	}
}
