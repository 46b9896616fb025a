package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// transparentListener stands in for the eBPF redirect: every connection it
// accepts is served as if its client had connected to orig.
func transparentListener(t *testing.T, e *env, orig string) string {
	t.Helper()
	ap := netip.MustParseAddrPort(orig)
	l, err := Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go e.srv.ServeTransparent(c, ap)
		}
	}()
	return l.Addr().String()
}

func TestTransparentPlainHTTPRotatesPerRequest(t *testing.T) {
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 3, regex: `127\.0\.0\.1`})
	orig := strings.TrimPrefix(o.URL, "http://")
	ln := transparentListener(t, e, orig)
	c, err := net.Dial("tcp", ln)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 6; i++ {
		fmt.Fprintf(c, "GET /t/%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, orig)
		resp, body := readRawResponse(t, br, "GET")
		if resp.StatusCode != 200 || body != fmt.Sprintf("GET /t/%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	for _, up := range e.upstream {
		if n := len(up.Requests(t)); n != 2 {
			t.Errorf("upstream %s served %d of 6 keep-alive requests, want 2 (rotation per request)", up.Addr, n)
		}
	}
}

func TestTransparentTLSMatchedBySNI(t *testing.T) {
	o := newOrigin(t, true, nil)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(o.URL, "https://"))
	// Only the SNI name matches the target; the original address does not.
	e := newEnv(t, envOptions{upstreams: 2, regex: `^localhost:` + port + `$`})
	ln := transparentListener(t, e, "127.0.0.1:"+port)
	for i := 0; i < 2; i++ {
		conf := caOf(o)
		conf.ServerName, conf.InsecureSkipVerify = "localhost", true // the test cert does not name localhost
		tr := &http.Transport{}
		tr.DialTLSContext = func(_ context.Context, _, _ string) (net.Conn, error) {
			c, err := net.Dial("tcp", ln)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, conf)
			return tc, tc.Handshake()
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://localhost:" + port + "/secret")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if string(b) != "GET /secret" {
			t.Fatalf("body %q", b)
		}
	}
	var connects []string
	for _, up := range e.upstream {
		connects = append(connects, up.Requests(t)...)
	}
	if len(connects) != 2 {
		t.Fatalf("upstream requests %v, want one CONNECT per connection", connects)
	}
	for _, r := range connects {
		if !strings.HasPrefix(r, "CONNECT localhost:"+port) {
			t.Errorf("upstream saw %q, want CONNECT to the SNI name", r)
		}
	}
}

func TestTransparentUnmatched(t *testing.T) {
	o := newOrigin(t, false, nil)
	orig := strings.TrimPrefix(o.URL, "http://")
	for _, policy := range []string{UnmatchedReject, UnmatchedDirect} {
		t.Run(policy, func(t *testing.T) {
			e := newEnv(t, envOptions{upstreams: 1, regex: `never-matches`, opts: Options{Transparent: TransparentOptions{Unmatched: policy}}})
			ln := transparentListener(t, e, orig)
			c, err := net.Dial("tcp", ln)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /direct HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", orig)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, err := io.ReadAll(c)
			switch policy {
			case UnmatchedReject:
				if err == nil || !strings.Contains(err.Error(), "reset") || len(b) != 0 {
					t.Errorf("reject: got %q, %v; want a reset", b, err)
				}
			case UnmatchedDirect:
				if !strings.HasSuffix(string(b), "GET /direct") {
					t.Errorf("direct: got %q, %v", b, err)
				}
				if n := len(e.upstream[0].Requests(t)); n != 0 {
					t.Errorf("direct connection went through the upstream (%d requests)", n)
				}
			}
			if n := len(o.requests()); policy == UnmatchedReject && n != 0 {
				t.Errorf("rejected connection reached the origin")
			}
		})
	}
}

// A client that waits for the server to speak first (SSH, SMTP) is
// tunnelled to its original destination after the sniff timeout.
func TestTransparentServerFirstProtocol(t *testing.T) {
	orig := tcpOrigin(t, func(c *net.TCPConn) {
		io.WriteString(c, "220 hello\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	e := newEnv(t, envOptions{upstreams: 1, regex: `^127\.0\.0\.1:`, opts: Options{Transparent: TransparentOptions{SniffTimeout: 100 * time.Millisecond}}})
	ln := transparentListener(t, e, orig)
	c, err := net.Dial("tcp", ln)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	greet, err := br.ReadString('\n')
	if err != nil || greet != "220 hello\r\n" {
		t.Fatalf("greeting %q %v", greet, err)
	}
	io.WriteString(c, "HELO x\r\n")
	if echo, _ := br.ReadString('\n'); echo != "echo HELO x\r\n" {
		t.Fatalf("echo %q", echo)
	}
	if r := e.upstream[0].Requests(t); len(r) != 1 || !strings.HasPrefix(r[0], "CONNECT "+orig) {
		t.Errorf("upstream saw %v, want one CONNECT %s", r, orig)
	}
}

// Transparent clients cannot authenticate: auth.transparent.allowCidrs
// decides by source address, per target.
func TestTransparentSourceAllowList(t *testing.T) {
	o := newOrigin(t, false, nil)
	orig := strings.TrimPrefix(o.URL, "http://")
	for _, tc := range []struct {
		name    string
		rule    auth.SourceRule
		allowed bool
	}{
		{"source allowed", auth.SourceRule{Prefix: netip.MustParsePrefix("127.0.0.0/8")}, true},
		{"source allowed for the target", auth.SourceRule{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Targets: []string{"t1"}}, true},
		{"source allowed for another target", auth.SourceRule{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Targets: []string{"x"}}, false},
		{"source not listed", auth.SourceRule{Prefix: netip.MustParsePrefix("198.18.0.0/15")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustAuth(t, auth.Config{Enabled: true, Sources: []auth.SourceRule{tc.rule}})
			e := newEnv(t, envOptions{upstreams: 1, regex: `127\.0\.0\.1`, opts: Options{Auth: a}})
			ln := transparentListener(t, e, orig)
			c, err := net.Dial("tcp", ln)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /src HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", orig)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(c)
			got := strings.HasPrefix(string(b), "HTTP/1.1 200")
			if got != tc.allowed {
				t.Fatalf("allowed = %v, want %v: %q", got, tc.allowed, statusLine(string(b)))
			}
			if !tc.allowed && !strings.HasPrefix(string(b), "HTTP/1.1 403") {
				t.Errorf("refusal is not a 403: %q", statusLine(string(b)))
			}
		})
	}
}

// The unmatched policy direct never takes a client where the destination
// policy refuses: the agent would make that connection from where it
// stands (a gateway's metadata service, its loopback). Plain HTTP and an
// opaque or TLS stream are both reset, and counted as forbidden.
func TestTransparentUnmatchedDirectDestinationPolicy(t *testing.T) {
	o := newOrigin(t, false, nil)
	orig := strings.TrimPrefix(o.URL, "http://")
	var mu sync.Mutex
	var outcomes []string
	e := newEnv(t, envOptions{upstreams: 1, regex: `never-matches`, opts: Options{
		Transparent:  TransparentOptions{Unmatched: UnmatchedDirect, SniffTimeout: 100 * time.Millisecond},
		Destinations: &DestinationPolicy{Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		Hooks: Hooks{Request: func(ev RequestEvent) {
			mu.Lock()
			outcomes = append(outcomes, ev.Outcome)
			mu.Unlock()
		}},
	}})
	ln := transparentListener(t, e, orig)
	for _, first := range []string{"GET /direct HTTP/1.1\r\nHost: " + orig + "\r\n\r\n", ""} {
		c, err := net.Dial("tcp", ln)
		if err != nil {
			t.Fatal(err)
		}
		if first != "" {
			io.WriteString(c, first)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "reset") || len(b) != 0 {
			t.Errorf("first bytes %q: got %q, %v; want a reset", first, b, err)
		}
	}
	if n := len(o.requests()); n != 0 {
		t.Errorf("a refused destination was reached directly (%d requests)", n)
	}
	testenvEventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(outcomes) == 2 && outcomes[0] == OutcomeForbidden && outcomes[1] == OutcomeForbidden
	}, func() string { mu.Lock(); defer mu.Unlock(); return toJSON(outcomes) })
}
