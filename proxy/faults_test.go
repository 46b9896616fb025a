package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// requireAllAvailable fails unless every IP of the pool is available with
// no failure counted.
//
// The last IP goes back to the pool just after its answer reaches the
// client, so an IP still in use (with no failure) is waited for, briefly.
func requireAllAvailable(t *testing.T, e *env) {
	t.Helper()
	testenv.Eventually(t, 2*time.Second, func() error {
		snap, err := e.pool().Snapshot(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snap {
			if s.Failures != 0 || s.State == pool.StateQuarantined || s.State == pool.StateCooling {
				t.Fatalf("IP %s is %s with %d failures; want available with 0", s.Addr, s.State, s.Failures)
			}
			if s.State != pool.StateAvailable {
				return fmt.Errorf("IP %s is %s; waiting for it back", s.Addr, s.State)
			}
		}
		return nil
	})
}

// connectStatus sends a CONNECT for authority and returns the agent's
// answer and its JSON error document; status 0 when none came within 3s.
func (e *env) connectStatus(t *testing.T, authority string) (int, errorDoc) {
	t.Helper()
	out := rawRequest(t, e.addr, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, errorDoc{Error: fmt.Sprintf("no answer (%v in %q)", err, out)}
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, decodeError(t, resp, string(b))
}

// TestE2EDestinationFaultsLeaveIPsAvailable: requests for destinations
// that the upstream proxies cannot reach (loopback ports where nothing
// listens: tinyproxy answers "500 Unable to connect", as it does for a
// name it cannot resolve) count against no IP. Before, three such CONNECTs
// quarantined every IP of a 3-IP target and the next good request got 503.
func TestE2EDestinationFaultsLeaveIPsAvailable(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "fine") })
	e := newEnv(t, envOptions{upstreams: 3, retries: 2, tls: caOf(o), cfg: pool.Config{FailuresUntilQuarantine: 3}})
	var dead []string
	for range 4 {
		dead = append(dead, deadAddr(t))
	}
	c := e.headerClient()
	for i := range 24 {
		d := dead[i%len(dead)]
		switch i % 3 {
		case 0, 1: // CONNECT, as a browser's background fetches do
			status, doc := e.connectStatus(t, d)
			if status != http.StatusBadGateway || doc.Error != "destination_unreachable" {
				t.Fatalf("CONNECT %s: %d %+v; want 502 destination_unreachable", d, status, doc)
			}
			// The first request for a destination asks a second IP; later
			// ones are not retried while the fault is remembered.
			want := 1
			if i < len(dead) {
				want = 2
			}
			if len(doc.Attempts) != want {
				t.Errorf("request %d, CONNECT %s: attempts %+v, want %d", i, d, doc.Attempts, want)
			}
		default: // header mode to an https origin: a tunnel, then TLS
			req := e.newReq(t, "GET", "https://"+d, "/", nil)
			resp, body := do(t, c, req)
			if doc := decodeError(t, resp, body); resp.StatusCode != http.StatusBadGateway || doc.Error != "destination_unreachable" {
				t.Fatalf("GET https://%s: %d %s", d, resp.StatusCode, body)
			}
		}
	}
	requireAllAvailable(t, e)
	resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/", nil))
	if resp.StatusCode != 200 || body != "fine" {
		t.Fatalf("good request after the failing ones: %d %s", resp.StatusCode, body)
	}
	if n := e.targets[0].destFaults().size(); n != len(dead) {
		t.Errorf("%d destinations remembered, want %d", n, len(dead))
	}
}

// badUpstream is an upstream proxy that answers every request with status.
func badUpstream(t *testing.T, status string) string {
	return tcpOrigin(t, func(c *net.TCPConn) {
		defer c.Close()
		_, _ = http.ReadRequest(bufio.NewReader(c))
		fmt.Fprintf(c, "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status)
	})
}

// TestE2ESuspectAnswerBlamedWhenAnotherIPReaches: an IP whose proxy says
// it cannot reach a destination that another IP then reaches is at fault
// after all, and its failure is counted; the request succeeds.
func TestE2ESuspectAnswerBlamedWhenAnotherIPReaches(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "fine") })
	bad := badUpstream(t, "502 Bad Gateway")
	e := newEnv(t, envOptions{leading: []string{bad}, upstreams: 1, retries: 1, tls: caOf(o), cfg: pool.Config{FailuresUntilQuarantine: 2}})
	c := e.headerClient()
	for i := range 2 {
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/", nil))
		if resp.StatusCode != 200 || body != "fine" {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		st, err := e.pool().State(t.Context(), bad)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 && (st.State != pool.StateAvailable || st.Failures != 1) {
			t.Fatalf("after one request the bad IP is %s with %d failures; want available with 1", st.State, st.Failures)
		}
		if i == 1 && st.State != pool.StateQuarantined {
			t.Fatalf("after two requests the bad IP is %s with %d failures; want quarantined", st.State, st.Failures)
		}
	}
	if n := e.targets[0].destFaults().size(); n != 0 {
		t.Errorf("%d destinations remembered as failing, want 0", n)
	}
}

// TestE2EOrigin502FromEveryIPNotCounted: an origin answering 502 through
// every IP is the origin's fault: the second IP confirms it, the request
// stops there with the origin's answer, and no IP is counted.
func TestE2EOrigin502FromEveryIPNotCounted(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "origin down")
	})
	e := newEnv(t, envOptions{upstreams: 3, retries: 3, cfg: pool.Config{FailuresUntilQuarantine: 1}})
	for i := range 5 {
		resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
		if resp.StatusCode != http.StatusBadGateway || body != "origin down" {
			t.Fatalf("request %d: %d %q; want the origin's 502", i, resp.StatusCode, body)
		}
	}
	if n := len(o.requests()); n != 2+4 {
		t.Errorf("origin saw %d requests, want 6 (two to confirm, then one each)", n)
	}
	requireAllAvailable(t, e)
}

// lowestFreeFD returns the descriptor number the next socket would get.
func lowestFreeFD(t *testing.T) uint64 {
	t.Helper()
	fd, err := syscall.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	return uint64(fd)
}

// withoutFreeFDs runs f with the process's descriptor limit lowered so
// that no new descriptor can be opened: every socket(2) fails with EMFILE,
// for real. Not for parallel tests.
func withoutFreeFDs(t *testing.T, f func()) {
	t.Helper()
	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	low := saved
	low.Cur = lowestFreeFD(t)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
			t.Fatal(err)
		}
	}()
	f()
}

// TestE2ELocalErrorsNotCounted: when the agent itself cannot open a socket
// (EMFILE), the request and the tunnel fail at once with 503 and no IP is
// counted, even with a quarantine threshold of one. Not parallel: it
// lowers the process's descriptor limit for a moment.
func TestE2ELocalErrorsNotCounted(t *testing.T) {
	o := newOrigin(t, false, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "fine") })
	e := newEnv(t, envOptions{upstreams: 3, retries: 2, cfg: pool.Config{FailuresUntilQuarantine: 1}})
	host := strings.TrimPrefix(o.URL, "http://")
	// Both client connections are open, and accepted, before the limit drops.
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		conns = append(conns, c)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if !(e.accepted.Load() == 2 && e.srv.ActiveConns() == 2) {
			return errors.New("still waiting for the agent accepted both connections")
		}
		return nil
	})
	heads := []string{
		"GET http://" + host + "/ HTTP/1.1\r\nHost: " + host + "\r\n\r\n",
		"CONNECT " + host + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n",
	}
	var answers []*http.Response
	var bodies []string
	withoutFreeFDs(t, func() {
		for i, c := range conns {
			if _, err := io.WriteString(c, heads[i]); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			method := http.MethodGet
			if i == 1 {
				method = http.MethodConnect
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
			if err != nil {
				t.Errorf("read answer %d: %v", i, err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			answers, bodies = append(answers, resp), append(bodies, string(b))
		}
	})
	for i, resp := range answers {
		doc := decodeError(t, resp, bodies[i])
		if resp.StatusCode != http.StatusServiceUnavailable || doc.Error != ReasonLocal || len(doc.Attempts) != 1 {
			t.Errorf("answer %d: %d %s; want 503 %s after one attempt", i, resp.StatusCode, bodies[i], ReasonLocal)
		}
	}
	requireAllAvailable(t, e)
	resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
	if resp.StatusCode != 200 || body != "fine" {
		t.Fatalf("request once descriptors are free again: %d %s", resp.StatusCode, body)
	}
}

func TestIsLocalError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.EMFILE)}, true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}, true},
		{fmt.Errorf("wrapped: %w", syscall.ENOBUFS), true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, false},
		{io.EOF, false},
		{nil, false},
	} {
		if got := IsLocalError(tc.err); got != tc.want {
			t.Errorf("IsLocalError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// tinyproxyCantConnect is tinyproxy 1.11's answer, byte for byte but for
// the body's length, to a CONNECT or request for a name it cannot resolve
// (seen with nonexistent.invalid in a network namespace with no route out,
// so no query could leave) and for a refused connection.
const tinyproxyCantConnect = "HTTP/1.1 500 Unable to connect\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n" +
	"<html><head><title>500 Unable to connect</title></head><body><h1>Unable to connect</h1>" +
	"<p>Tinyproxy was unable to connect to the remote web server.</p></body></html>\n"

// TestE2EUnresolvableNamesLeaveIPsAvailable: 30 CONNECTs for names no
// resolver answers (each a new name, as a browser's background checks
// use several) through three upstreams that answer as tinyproxy does
// leave every IP available with no failure counted.
func TestE2EUnresolvableNamesLeaveIPsAvailable(t *testing.T) {
	t.Parallel()
	var ups []string
	for range 3 {
		ups = append(ups, tcpOrigin(t, func(c *net.TCPConn) {
			if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				io.WriteString(c, tinyproxyCantConnect)
			}
		}))
	}
	e := newEnv(t, envOptions{leading: ups, retries: 3, cfg: pool.Config{FailuresUntilQuarantine: 2}})
	var answers []string
	for i := range 30 {
		name := fmt.Sprintf("nonexistent-%d.invalid:443", i%10)
		status, doc := e.connectStatus(t, name)
		answers = append(answers, fmt.Sprintf("%d %s", status, doc.Error))
	}
	requireAllAvailable(t, e)
	for i, a := range answers {
		if a != "502 destination_unreachable" {
			t.Fatalf("CONNECT %d: %s; want 502 destination_unreachable", i, a)
		}
	}
}

// TestDestFaultsBounded: a confirmed destination is remembered for
// destFaultTTL with its reason only, and never more than maxDestFaults
// destinations are (a client inventing names cannot grow the map).
func TestDestFaultsBounded(t *testing.T) {
	var d destFaults
	now := time.Unix(1000, 0)
	var s suspicion
	s.dest = "a.invalid:443"
	if v := s.judge(&d, "ip1", "connect_status_500", now); v != undecided {
		t.Fatalf("first suspect answer: %v, want undecided", v)
	}
	if v := s.judge(&d, "ip1", "connect_status_500", now); v != undecided {
		t.Fatalf("same IP again: %v, want undecided", v)
	}
	if v := s.judge(&d, "ip2", "connect_status_502", now); v != undecided {
		t.Fatalf("another IP, another answer: %v, want undecided", v)
	}
	if v := s.judge(&d, "ip3", "connect_status_500", now); v != destination {
		t.Fatalf("another IP, the same answer: %v, want destination", v)
	}
	if !d.confirmed("a.invalid:443", "connect_status_500", now.Add(destFaultTTL-time.Nanosecond)) ||
		d.confirmed("a.invalid:443", "connect_status_502", now) {
		t.Fatal("confirmed destination not remembered with its reason")
	}
	if d.confirmed("a.invalid:443", "connect_status_500", now.Add(destFaultTTL)) || d.size() != 0 {
		t.Fatalf("remembered past destFaultTTL (%d entries)", d.size())
	}
	for i := range 3 * maxDestFaults {
		d.confirm(fmt.Sprintf("n%d.invalid:443", i), "connect_status_500", now)
		if d.size() > maxDestFaults {
			t.Fatalf("%d destinations remembered, cap %d", d.size(), maxDestFaults)
		}
	}
	if !d.confirmed(fmt.Sprintf("n%d.invalid:443", 3*maxDestFaults-1), "connect_status_500", now) {
		t.Error("the newest destination was evicted")
	}
	// A reached destination is forgotten, and blames only the other IPs.
	s = suspicion{dest: "b.invalid:443"}
	s.judge(&d, "ip1", "status_502", now)
	s.judge(&d, "ip1", "status_502", now)
	s.judge(&d, "ip2", "status_504", now)
	if got := s.reached(&d, "ip2"); len(got) != 1 || got[0].IP != "ip1" {
		t.Errorf("reached through ip2 blames %v, want ip1 once", got)
	}
	d.confirm("c.invalid:443", "status_502", now)
	s = suspicion{dest: "c.invalid:443"}
	s.reached(&d, "ip1")
	if d.confirmed("c.invalid:443", "status_502", now) {
		t.Error("a reached destination is still remembered as failing")
	}
}
