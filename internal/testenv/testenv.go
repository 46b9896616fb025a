// Package testenv starts the real programs that end-to-end tests run
// against (tinyproxy upstreams, redis-server) and holds the rules for tests
// that need root.
package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// RequireRoot skips t when not root, unless PH_REQUIRE_BPF=1 (set by CI),
// where a skip would hide a missing capability and so fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("PH_REQUIRE_BPF") == "1" {
		t.Fatal("test needs root, and PH_REQUIRE_BPF=1 forbids skipping it")
	}
	t.Skip("test needs root")
}

// LookPath fails t with an install hint when a program is missing: tests
// that need real upstreams never pass by skipping.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run scripts/deps.sh (or apt-get install %s)", name, name)
	}
	return p
}

// FreePort returns a port that is free on ip right now.
func FreePort(t testing.TB, ip string) int {
	t.Helper()
	// The port is free when the kernel hands it out, but a test running in
	// parallel (another package is another process) may be handed it too
	// before either binds it: each port handed out is also reserved for a
	// few minutes in a directory all test processes share.
	dir := filepath.Join(os.TempDir(), "ph-test-ports")
	_ = os.MkdirAll(dir, 0o755)
	for range 100 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("find free port on %s: %v", ip, err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if reservePort(filepath.Join(dir, fmt.Sprintf("%s-%d", ip, port))) {
			return port
		}
	}
	t.Fatalf("find free port on %s: every port handed out was reserved by another test", ip)
	return 0
}

// reservePort creates the reservation file path, or takes it over when it
// is older than the reservation time.
func reservePort(path string) bool {
	for range 2 {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			return true
		}
		st, serr := os.Stat(path)
		if serr != nil || time.Since(st.ModTime()) < 3*time.Minute {
			return false
		}
		_ = os.Remove(path)
	}
	return false
}

// WaitListening waits until addr accepts TCP connections.
func WaitListening(t testing.TB, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening after %s: %v", addr, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Tinyproxy is a running tinyproxy upstream.
type Tinyproxy struct {
	Addr string // ip:port
	Log  string // its log file (LogLevel Connect: one line per request)
	cmd  *exec.Cmd
}

// TinyproxyOptions adjusts a tinyproxy instance.
type TinyproxyOptions struct {
	BasicAuth string // "user:pass" to require proxy auth
	Extra     string // more config lines
	// Netns runs tinyproxy inside that test network namespace (a name
	// under /run/netns, see NewNetns) on port 8888 unless Port is set.
	Netns *Netns
	Port  int
	// Hosts are /etc/hosts lines tinyproxy sees (only with Netns: it then
	// runs in a private mount namespace with that file bound over /etc/hosts).
	Hosts string
}

// StartTinyproxy runs tinyproxy on ip (a loopback address such as
// 127.0.0.2, or an address inside the test's network namespace) and stops
// it when the test ends.
//
// On the host's loopback the port comes from FreePort, which another test
// running in parallel may be handed too: the second tinyproxy then fails to
// bind, and the test would talk to the first one (and see its connections
// reset when that test ends). So the listener must be this tinyproxy's own;
// if not, it starts again on another port.
func StartTinyproxy(t testing.TB, ip string, o TinyproxyOptions) *Tinyproxy {
	t.Helper()
	for attempt := 1; ; attempt++ {
		tp, owned := startTinyproxy(t, ip, o)
		if owned || o.Netns != nil || o.Port != 0 {
			return tp
		}
		tp.Stop()
		if attempt == 5 {
			t.Fatalf("tinyproxy on %s: the port was taken by another listener 5 times", ip)
		}
	}
}

func startTinyproxy(t testing.TB, ip string, o TinyproxyOptions) (*Tinyproxy, bool) {
	t.Helper()
	bin := LookPath(t, "tinyproxy")
	dir := t.TempDir()
	port := o.Port
	if port == 0 && o.Netns != nil {
		port = 8888
	} else if port == 0 {
		port = FreePort(t, ip)
	}
	tp := &Tinyproxy{Addr: net.JoinHostPort(ip, fmt.Sprint(port)), Log: filepath.Join(dir, "tinyproxy.log")}
	conf := fmt.Sprintf(`Port %d
Listen %s
Timeout 30
Allow 127.0.0.0/8
Allow 198.18.0.0/15
MaxClients 500
LogLevel Connect
LogFile "%s"
PidFile "%s"
DisableViaHeader Yes
`, port, ip, tp.Log, filepath.Join(dir, "tinyproxy.pid"))
	if o.BasicAuth != "" {
		user, pass, _ := strings.Cut(o.BasicAuth, ":")
		conf += fmt.Sprintf("BasicAuth %s %s\n", user, pass)
	}
	conf += o.Extra
	cf := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	tp.cmd = exec.Command(bin, "-d", "-c", cf)
	if o.Netns != nil {
		tp.cmd = o.Netns.tinyproxyCommand(t, dir, bin, cf, o.Hosts)
	}
	tp.cmd.Stdout, tp.cmd.Stderr = nil, nil
	if err := tp.cmd.Start(); err != nil {
		t.Fatalf("start tinyproxy: %v", err)
	}
	t.Cleanup(func() {
		_ = tp.cmd.Process.Kill()
		_ = tp.cmd.Wait()
	})
	if o.Netns != nil {
		o.Netns.WaitListening(t, tp.Addr, 5*time.Second)
		return tp, true
	}
	WaitListening(t, tp.Addr, 5*time.Second)
	return tp, listensIn(tp.cmd.Process.Pid, ip, port)
}

// listensIn reports whether process pid holds the TCP listener on ip:port
// (an IPv4 address), from /proc/net/tcp and the process's descriptors.
func listensIn(pid int, ip string, port int) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return true // not checked
	}
	b := a.As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", b[3], b[2], b[1], b[0], port)
	raw, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return true
	}
	inode := ""
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == want && f[3] == "0A" {
			inode = f[9]
		}
	}
	if inode == "" {
		return false
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && l == "socket:["+inode+"]" {
			return true
		}
	}
	return false
}

// Requests returns the request lines tinyproxy logged, in order.
func (tp *Tinyproxy) Requests(t testing.TB) []string {
	t.Helper()
	f, err := os.Open(tp.Log)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "]: Request (file descriptor"); i >= 0 {
			if j := strings.Index(line[i:], "): "); j >= 0 {
				out = append(out, line[i+j+3:])
			}
		}
	}
	return out
}

// Stop kills the upstream (to simulate a dead IP).
func (tp *Tinyproxy) Stop() {
	_ = tp.cmd.Process.Kill()
	_ = tp.cmd.Wait()
}

// WriteCounted writes everything src holds to w in writes of chunk bytes,
// adding each write's count to written as it goes (for tests that watch
// how far a writer gets while its reader stalls).
func WriteCounted(w io.Writer, src io.Reader, chunk int, written *atomic.Int64) error {
	buf := make([]byte, chunk)
	for {
		k, err := io.ReadFull(src, buf)
		if k > 0 {
			m, werr := w.Write(buf[:k])
			written.Add(int64(m))
			if werr != nil {
				return werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// RequireIsolated skips t unless it runs inside scripts/isolated.sh (a
// network namespace with only loopback, PH_ISOLATED=1), for tests whose
// traffic is addressed off this machine (why says where): outside it those
// packets would leave. make test and CI always run isolated, where this
// never skips.
func RequireIsolated(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("PH_ISOLATED") != "1" {
		t.Skipf("not run outside scripts/isolated.sh: %s", why)
	}
}
