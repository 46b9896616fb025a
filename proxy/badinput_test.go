package proxy

// Hostile and broken client input, sent as raw bytes. After each case the
// agent must still serve a normal request.

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// mustServe checks that the agent still answers a normal request.
func (e *env) mustServe(t *testing.T, o *origin) {
	t.Helper()
	resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/ok", nil))
	if resp.StatusCode != 200 || body != "GET /ok" {
		t.Fatalf("normal request after bad input: %d %q", resp.StatusCode, body)
	}
}

var statusRE = regexp.MustCompile(`^HTTP/1\.[01] (\d{3}) `)

// checkRefusal checks that out is one JSON error response with status.
func checkRefusal(t *testing.T, out, status string) {
	t.Helper()
	m := statusRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no response (want %s): %q", status, truncate(out, 200))
	}
	if m[1] != status {
		t.Fatalf("status %s, want %s: %q", m[1], status, truncate(out, 300))
	}
	head, body, _ := strings.Cut(out, "\r\n\r\n")
	if !strings.Contains(head+"\r\n", "\r\nConnection: close\r\n") {
		t.Errorf("refusal does not close the connection: %q", head)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil || doc["error"] == nil {
		t.Errorf("refusal body is not a JSON error: %q", body)
	}
}

// closeWrite at the end of a raw request makes the client half-close after it.
const closeWrite = "\x00<close-write>"

// rawRequestCloseWrite is rawRequest with a half-close after the bytes.
func rawRequestCloseWrite(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, quiet: true})
	tgt := HeaderTarget + ": " + o.URL + "\r\n"
	// Connection: close makes a wrongly accepted request end at once.
	get := func(headers string) string {
		return "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + headers + "\r\n"
	}
	post := func(headers, body string) string {
		return "POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + tgt + headers + "\r\n" + body
	}
	withTarget := func(v string) string { return get(HeaderTarget + ": " + v + "\r\n") }

	for _, tc := range []struct {
		name, raw, status string
	}{
		// request line
		{"malformed request line", "GARBAGE\r\n\r\n", "400"},
		{"request line without version", "GET /x\r\n" + tgt + "\r\n", "400"},
		{"double space in request line", "GET  /x HTTP/1.1\r\n" + tgt + "\r\n", "400"},
		{"invalid method", "GE(T /x HTTP/1.1\r\n" + tgt + "\r\n", "400"},
		{"unsupported version", "GET /x HTTP/2.0\r\n" + tgt + "\r\n", "505"},
		{"malformed version", "GET /x HTTX/1.1\r\n" + tgt + "\r\n", "400"},
		{"control character in target", "GET /x\x01y HTTP/1.1\r\n" + tgt + "\r\n", "400"},
		{"asterisk form", "OPTIONS * HTTP/1.1\r\nHost: a\r\n" + tgt + "\r\n", "400"},
		{"authority form for GET", "GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"absolute ftp", "GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"absolute file", "GET file:///etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"absolute with credentials", "GET http://u:p@example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"absolute with bad port", "GET http://example.com:99999/ HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"CONNECT without port", "CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"CONNECT without host", "CONNECT :443 HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"CONNECT port 0", "CONNECT example.com:0 HTTP/1.1\r\nHost: a\r\n\r\n", "400"},
		{"CONNECT port out of range", "CONNECT example.com:65536 HTTP/1.1\r\nHost: a\r\n\r\n", "400"},

		// header block
		{"header block over 64 KiB", get(tgt + "X-Big: " + strings.Repeat("a", 70<<10) + "\r\n"), "431"},
		{"request line over 64 KiB", "GET /" + strings.Repeat("a", 70<<10) + " HTTP/1.1\r\n" + tgt + "\r\n", "431"},
		{"too many header fields", get(tgt + strings.Repeat("X-A: b\r\n", 1001)), "431"},
		{"bare CR in header", get(tgt + "X-A: a\rb\r\n"), "400"},
		{"obsolete line folding", get(tgt + "X-A: a\r\n  folded\r\n"), "400"},
		{"space in header name", get(tgt + "X A: b\r\n"), "400"},
		{"space before colon", get(tgt + "Content-Length : 0\r\n"), "400"},
		{"empty header name", get(tgt + ": b\r\n"), "400"},
		{"header without colon", get(tgt + "X-A\r\n"), "400"},
		{"NUL in header value", get(tgt + "X-A: a\x00b\r\n"), "400"},
		{"DEL in header value", get(tgt + "X-A: a\x7fb\r\n"), "400"},

		// framing
		{"Content-Length and Transfer-Encoding", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), "400"},
		{"Transfer-Encoding and Content-Length", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"), "400"},
		{"unknown Transfer-Encoding", post("Transfer-Encoding: gzip\r\n", ""), "501"},
		{"chunked not last", post("Transfer-Encoding: chunked, gzip\r\n", ""), "501"},
		{"two Transfer-Encoding headers", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), "501"},
		{"bad chunk size", post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"), "400"},
		{"chunk longer than its size", post("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX\r\n0\r\n\r\n"), "400"},
		{"negative chunk size", post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"), "400"},
		{"huge chunk size", post("Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), "400"},
		{"two different Content-Length", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), "400"},
		{"Content-Length list", post("Content-Length: 5, 6\r\n", "hello!"), "400"},
		{"negative Content-Length", post("Content-Length: -1\r\n", ""), "400"},
		{"signed Content-Length", post("Content-Length: +5\r\n", "hello"), "400"},
		{"hex Content-Length", post("Content-Length: 0x5\r\n", "hello"), "400"},
		{"empty Content-Length", post("Content-Length: \r\n", ""), "400"},
		{"Content-Length overflow", post("Content-Length: 99999999999999999999\r\n", ""), "400"},
		{"Content-Length with trailing NBSP", post("Content-Length: 5\u00a0\r\n", "hello"), "400"},
		{"Transfer-Encoding with trailing NEL", post("Transfer-Encoding: chunked\u0085\r\n", "5\r\nhello\r\n0\r\n\r\n"), "501"},
		{"body shorter than Content-Length, then EOF", post("Content-Length: 10\r\n", "short") + closeWrite, "400"},

		// X-Proxy-Hopper-Target
		{"missing target header", get(""), "400"},
		{"two target headers", get(tgt + tgt), "400"},
		{"empty target", withTarget(""), "400"},
		{"target with control character", withTarget(o.URL + "/\x01"), "400"},
		{"target with tab inside", withTarget("http://exa\tmple.com/"), "400"},
		{"target with bare CR", withTarget(o.URL + "/\rX-Injected: 1"), "400"},
		{"target with DEL", withTarget(o.URL + "/\x7f"), "400"},
		{"target scheme ftp", withTarget("ftp://example.com/"), "400"},
		{"target scheme file", withTarget("file:///etc/passwd"), "400"},
		{"target scheme gopher", withTarget("gopher://example.com:70/"), "400"},
		{"target scheme javascript", withTarget("javascript:alert(1)"), "400"},
		{"target without scheme", withTarget("example.com"), "400"},
		{"target scheme-relative", withTarget("//example.com/"), "400"},
		{"target without host", withTarget("http:///path"), "400"},
		{"target opaque", withTarget("http:example.com"), "400"},
		{"target with credentials", withTarget("http://user:pw@example.com/"), "400"},
		{"target with fragment", withTarget("http://example.com/#frag"), "400"},
		{"target with port 0", withTarget("http://example.com:0/"), "400"},
		{"target with big port", withTarget("http://example.com:65536/"), "400"},
		{"target with empty port", withTarget("http://example.com:/"), "400"},
		{"target with space in host", withTarget("http://exa mple.com/"), "400"},
		{"target with backslash in host", withTarget(`http://example.com\@evil.com/`), "400"},
		{"target with encoded CRLF in host", withTarget("http://a%0d%0ab.com/"), "400"},
		{"target with space in query", withTarget(o.URL + "/?a HTTP/1.1"), "400"},
		{"target with bracket in host", withTarget("http://]0/"), "400"},
		{"target with quote in host", withTarget(`http://a"b/`), "400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out string
			if raw, ok := strings.CutSuffix(tc.raw, closeWrite); ok {
				out = rawRequestCloseWrite(t, e.addr, raw)
			} else {
				out = rawRequest(t, e.addr, tc.raw)
			}
			checkRefusal(t, out, tc.status)
			e.mustServe(t, o)
		})
	}
	for _, r := range o.requests() {
		if r.URL.Path != "/ok" {
			t.Errorf("a refused request reached the origin: %s %s", r.Method, r.URL)
		}
	}
}

// Requests that look odd but are valid pass.
func TestBadInputTolerated(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+string(b))
	})
	e := newEnv(t, envOptions{upstreams: 1})
	tgt := HeaderTarget + ": " + o.URL + "\r\n"
	for _, tc := range []struct{ name, raw, body string }{
		{"empty lines before the request", "\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\n" + tgt + "Connection: close\r\n\r\n", "GET /a "},
		{"bare LF line ends", "GET /a HTTP/1.1\nHost: a\n" + tgt[:len(tgt)-2] + "\nConnection: close\n\n", "GET /a "},
		{"same Content-Length twice", "POST /p HTTP/1.1\r\nHost: a\r\n" + tgt + "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "POST /p hello"},
		{"chunked with extension and trailer", "POST /p HTTP/1.1\r\nHost: a\r\n" + tgt + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
			"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", "POST /p hello world"},
		{"mixed-case chunked", "POST /p HTTP/1.1\r\nHost: a\r\n" + tgt + "Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "POST /p abc"},
		{"Expect 100-continue", "POST /p HTTP/1.1\r\nHost: a\r\n" + tgt + "Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", "POST /p hi"},
		{"upper-case scheme", "GET /u HTTP/1.1\r\nHost: a\r\n" + HeaderTarget + ": " + strings.Replace(o.URL, "http", "HTTP", 1) + "\r\nConnection: close\r\n\r\n", "GET /u "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := rawRequest(t, e.addr, tc.raw)
			out = strings.TrimPrefix(out, "HTTP/1.1 100 Continue\r\n\r\n")
			_, body, _ := strings.Cut(out, "\r\n\r\n")
			if !strings.HasPrefix(out, "HTTP/1.1 200 ") || body != tc.body {
				t.Errorf("got %q, want 200 with %q", out, tc.body)
			}
		})
	}
	// A bad request pipelined after a good one: the good one is answered.
	out := rawRequest(t, e.addr, "GET /good HTTP/1.1\r\nHost: a\r\n"+tgt+"\r\nGARBAGE\r\n\r\n")
	first, rest, _ := strings.Cut(out, "GET /good ")
	if !strings.HasPrefix(first, "HTTP/1.1 200 ") || !strings.Contains(rest, "HTTP/1.1 400 ") {
		t.Errorf("pipelined good+bad: %q", out)
	}
}

func TestBadInputSlowHead(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	const timeout = 300 * time.Millisecond
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{HeaderTimeout: timeout}})

	for _, tc := range []struct {
		name string
		send func(c net.Conn, stop <-chan struct{})
	}{
		{"half a head then nothing", func(c net.Conn, _ <-chan struct{}) {
			io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n")
		}},
		{"one byte every 50ms", func(c net.Conn, stop <-chan struct{}) {
			head := "GET /drip HTTP/1.1\r\nHost: a\r\n" + HeaderTarget + ": " + o.URL + "\r\n\r\n"
			for i := 0; i < len(head)-4; i++ {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := c.Write([]byte{head[i]}); err != nil {
					return
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			stop := make(chan struct{})
			defer close(stop)
			start := time.Now()
			go tc.send(c, stop)
			b, err := io.ReadAll(c)
			d := time.Since(start)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the agent kept a stalled head open for %s", d)
			}
			if d < timeout-50*time.Millisecond || d > timeout+time.Second {
				t.Errorf("connection closed after %s, want about HeaderTimeout %s", d, timeout)
			}
			if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 408 ") {
				t.Errorf("answer to a stalled head: %q", b)
			}
			e.mustServe(t, o)
		})
	}
}

func TestBadInputIdleKeepAlive(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	const idle = 300 * time.Millisecond
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{IdleTimeout: idle}})
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for i := 0; i < 2; i++ { // the idle timer restarts after each request
		io.WriteString(c, "GET /k HTTP/1.1\r\nHost: a\r\n"+HeaderTarget+": "+o.URL+"\r\n\r\n")
		if resp, body := readRawResponse(t, br, "GET"); resp.StatusCode != 200 || body != "GET /k" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if i == 0 {
			time.Sleep(idle / 2)
		}
	}
	start := time.Now()
	_, err = br.ReadByte()
	d := time.Since(start)
	if err != io.EOF {
		t.Fatalf("idle connection: %v, want EOF from the agent", err)
	}
	if d < idle-50*time.Millisecond || d > idle+time.Second {
		t.Errorf("idle connection closed after %s, want about IdleTimeout %s", d, idle)
	}
	e.mustServe(t, o)
}

func TestBadInputSlowBody(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{BodyReadTimeout: 200 * time.Millisecond}})
	start := time.Now()
	out := rawRequest(t, e.addr, "POST /b HTTP/1.1\r\nHost: a\r\n"+HeaderTarget+": "+o.URL+"\r\nContent-Length: 100\r\n\r\nonly ten.")
	checkRefusal(t, out, "408")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stalled body answered after %s", d)
	}
	if len(o.requests()) != 0 {
		t.Error("a stalled body reached the origin")
	}
	e.mustServe(t, o)
}

// A refusal sent while the client is still sending (an oversized head) must
// reach the client: the agent should half-close and drain for a moment
// (lingering close, RFC 9112 section 9.6) instead of closing with unread
// bytes, which makes the kernel send a reset that can destroy the response
// before the client reads it.
func TestBadInputRefusalLingers(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, quiet: true})
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() { b, err := io.ReadAll(c); done <- result{b, err} }()
	io.WriteString(c, "GET / HTTP/1.1\r\n"+HeaderTarget+": "+o.URL+"\r\nX-Big: "+strings.Repeat("a", 256<<10)+"\r\n\r\n")
	r := <-done
	checkRefusal(t, string(r.b), "431")
	if r.err != nil {
		t.Errorf("the connection ended with %v after the 431, want a clean close", r.err)
	}
}
