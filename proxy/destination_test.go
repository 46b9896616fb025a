package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseHostIP(t *testing.T) {
	cases := map[string]string{
		"127.0.0.1":                "127.0.0.1",
		"127.1":                    "127.0.0.1",
		"127.0.1":                  "127.0.0.1",
		"2130706433":               "127.0.0.1",
		"017700000001":             "127.0.0.1",
		"0x7f000001":               "127.0.0.1",
		"0x7f.1":                   "127.0.0.1",
		"0X7F.0.0.0x1":             "127.0.0.1",
		"0177.0.0.1":               "127.0.0.1",
		"0x":                       "0.0.0.0",
		"0":                        "0.0.0.0",
		"169.254.43518":            "169.254.169.254",
		"::ffff:127.0.0.1":         "127.0.0.1",
		"::ffff:7f00:1":            "127.0.0.1",
		"::1":                      "::1",
		"fe80::1%eth0":             "fe80::1",
		"fd00:ec2:0:0:0:0:0:254":   "fd00:ec2::254",
		"1.2.3.4.5":                "",
		"256.1.1.1":                "",
		"1.256.1.1":                "",
		"1.2.65536":                "",
		"4294967296":               "",
		"08.1.1.1":                 "",
		"1..1":                     "",
		"example.com":              "",
		"127.0.0.1.example.com":    "",
		"":                         "",
		"+1.1.1.1":                 "",
		"1_0.0.0.1":                "",
		"0x1.0x2.0x3.0x4.":         "",
		"99999999999999999999999":  "",
		"12345678901234567890.1.1": "",
	}
	for in, want := range cases {
		a, ok := ParseHostIP(in)
		got := ""
		if ok {
			got = a.String()
		}
		if got != want {
			t.Errorf("ParseHostIP(%q) = %q, want %q", in, got, want)
		}
	}
}

func testPolicy() *DestinationPolicy {
	return &DestinationPolicy{
		Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("169.254.0.0/16"),
			netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fd00:ec2::254/128")},
		DenyNames: []string{"localhost", "metadata.google.internal"},
		Allow:     []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")},
		OwnPorts:  []uint16{8080},
		Local:     []netip.Addr{netip.MustParseAddr("10.9.9.9")},
	}
}

func TestDestinationPolicyRefuse(t *testing.T) {
	p := testPolicy()
	for _, tc := range []struct {
		host   string
		port   int
		refuse bool
	}{
		{"127.0.0.1", 80, true},
		{"127.1", 80, true},
		{"2130706433", 80, true},
		{"0x7f.1", 80, true},
		{"127.0.0.1.", 80, true},
		{"::ffff:127.0.0.1", 80, true},
		{"169.254.169.254", 80, true},
		{"fd00:ec2::254", 80, true},
		{"LOCALHOST", 80, true},
		{"a.localhost", 80, true},
		{"metadata.google.internal", 80, true},
		{"127.0.0.9", 80, false},  // allowed
		{"127.0.0.9", 8080, true}, // own port beats allow
		{"0.0.0.0", 8080, true},   // own port on any address
		{"10.9.9.9", 8080, true},  // own port on a local address
		{"10.9.9.9", 80, false},
		{"10.0.0.1", 8080, false}, // not local
		{"localhost", 8080, true},
		{"notlocalhost", 80, false},
		{"example.com", 80, false},
		{"8.8.8.8", 443, false},
	} {
		if got := p.refuse(tc.host, tc.port) != ""; got != tc.refuse {
			t.Errorf("%s:%d refused = %v, want %v (%q)", tc.host, tc.port, got, tc.refuse, p.refuse(tc.host, tc.port))
		}
	}
	var none *DestinationPolicy
	if none.refuse("127.0.0.1", 80) != "" {
		t.Error("nil policy refuses")
	}
}

// Every mode refuses a denied destination, in any spelling, with 403 (a
// reset for transparent tunnels) before any IP is taken; the same origin
// is reached once allowed, and the agent's own listener never is.
func TestDestinationDeniedInEveryMode(t *testing.T) {
	o := newOrigin(t, false, nil)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(o.URL, "http://"))
	p := testPolicy()
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{Destinations: p}})
	spellings := []string{"127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1", "[::ffff:127.0.0.1]", "127.0.0.1."}
	for _, h := range spellings {
		u := "http://" + h + ":" + port
		if resp, body := e.headerGet(t, u, "/x", nil); resp.StatusCode != 403 || !strings.Contains(body, "destination_denied") {
			t.Errorf("header mode %s: %d %s", u, resp.StatusCode, body)
		}
		raw := rawRequest(t, e.addr, "GET "+u+"/x HTTP/1.1\r\nHost: "+h+"\r\n\r\n")
		if !strings.Contains(statusLine(raw), " 403 ") {
			t.Errorf("absolute form %s: %q", u, statusLine(raw))
		}
		raw = rawRequest(t, e.addr, "CONNECT "+h+":"+port+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if !strings.Contains(statusLine(raw), " 403 ") {
			t.Errorf("CONNECT %s:%s: %q", h, port, statusLine(raw))
		}
	}
	// Transparent: a TLS tunnel keyed by its SNI, and plain HTTP by Host.
	ln := transparentListener(t, e, "127.0.0.1:"+port)
	c, err := net.Dial("tcp", ln)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /t HTTP/1.1\r\nHost: 127.1:%s\r\n\r\n", port)
	if resp, body := readRawResponse(t, bufio.NewReader(c), "GET"); resp.StatusCode != 403 {
		t.Errorf("transparent HTTP: %d %s", resp.StatusCode, body)
	}
	c.Close()
	c, err = net.Dial("tcp", ln)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0}) // a (broken) ClientHello: keyed by orig
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("transparent TLS tunnel to a denied destination not reset: %d %v", n, err)
	}
	c.Close()

	if n := len(o.requests()); n != 0 {
		t.Fatalf("denied origin reached %d times", n)
	}
	if a := e.attemptLog(); len(a) != 0 {
		t.Fatalf("IPs used for denied destinations: %+v", a)
	}

	// Allowed, the same origin is reached; the agent's own port is not.
	p2 := testPolicy()
	p2.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	l, err := Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	own := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p2.OwnPorts = []uint16{uint16(own)}
	e2 := newEnv(t, envOptions{upstreams: 1, opts: Options{Destinations: p2}})
	if resp, body := e2.headerGet(t, "http://127.1:"+port, "/x", nil); resp.StatusCode != 200 {
		t.Fatalf("allowed destination: %d %s", resp.StatusCode, body)
	}
	if resp, body := e2.headerGet(t, fmt.Sprintf("http://2130706433:%d", own), "/x", nil); resp.StatusCode != 403 || !strings.Contains(body, "own listener") {
		t.Errorf("agent's own listener: %d %s", resp.StatusCode, body)
	}
}
