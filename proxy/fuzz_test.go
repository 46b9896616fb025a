package proxy

// Fuzz tests for the parsers that see a client's bytes. The seed corpora
// are the named files in testdata/fuzz/<FuzzName>/ (crash-* are inputs the
// fuzzers found); plain `go test` runs them all. Fuzz one with
//
//	go test -run '^$' -fuzz '^FuzzReadRequestHead$' -fuzztime 30s -fuzzminimizetime 5s ./proxy/

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// tokenByte reports whether c may appear in an RFC 9110 token; written out
// here independently of the parser's table.
func tokenByte(c byte) bool {
	switch {
	case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte(s[i]) {
			return false
		}
	}
	return true
}

// checkHead checks the invariants of a successfully parsed head.
func checkHead(t *testing.T, h *RequestHead) {
	t.Helper()
	if !validToken(h.Method) {
		t.Fatalf("method %q is not a token", h.Method)
	}
	switch {
	case h.Proto == "HTTP/1.1" && h.Minor == 1, h.Proto == "HTTP/1.0" && h.Minor == 0:
	default:
		t.Fatalf("proto %q minor %d", h.Proto, h.Minor)
	}
	if h.Target == "" {
		t.Fatal("empty request target")
	}
	for i := 0; i < len(h.Target); i++ {
		if c := h.Target[i]; c <= ' ' || c == 0x7f {
			t.Fatalf("request target %q has byte %#x", h.Target, c)
		}
	}
	for _, f := range h.Fields {
		if !validToken(f.Name) {
			t.Fatalf("field name %q is not a token", f.Name)
		}
		for i := 0; i < len(f.Value); i++ {
			if c := f.Value[i]; (c < ' ' && c != '\t') || c == 0x7f {
				t.Fatalf("field %s value %q has byte %#x", f.Name, f.Value, c)
			}
		}
		if strings.Trim(f.Value, " \t") != f.Value {
			t.Fatalf("field %s value %q is not trimmed", f.Name, f.Value)
		}
	}
}

// serializeHead writes h back as a canonical head.
func serializeHead(h *RequestHead) string {
	var b strings.Builder
	b.WriteString(h.Method + " " + h.Target + " " + h.Proto + "\r\n")
	for _, f := range h.Fields {
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

func FuzzReadRequestHead(f *testing.F) {
	const max = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		// A 16-byte buffer makes every line cross buffer fills.
		src := &countingReader{r: bytes.NewReader(data)}
		small := bufio.NewReaderSize(src, 16)
		h, err := ReadRequestHead(small, max)
		h2, err2 := ReadRequestHead(bufio.NewReaderSize(bytes.NewReader(data), 64<<10), max)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("buffer size changes the outcome: %v vs %v", err, err2)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if len(bytes.Trim(data, "\r\n")) != 0 {
					t.Fatalf("io.EOF for input with a request in it")
				}
				return
			}
			var he *HeadError
			if !errors.As(err, &he) {
				t.Fatalf("error %v (%T) is neither io.EOF nor *HeadError", err, err)
			}
			switch he.Status {
			case 400, 431, 505:
			default:
				t.Fatalf("status %d for a bad head", he.Status)
			}
			var he2 *HeadError
			if !errors.As(err2, &he2) || he2.Status != he.Status {
				t.Fatalf("buffer size changes the error: %v vs %v", err, err2)
			}
			return
		}
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("buffer size changes the head: %+v vs %+v", h, h2)
		}
		checkHead(t, h)
		// The head came from at most max bytes.
		if used := src.n - small.Buffered(); used > max {
			t.Fatalf("parsed %d bytes, limit %d", used, max)
		}
		// A canonical rewrite parses to the same head.
		re, err := ReadRequestHead(bufio.NewReader(strings.NewReader(serializeHead(h))), 1<<20)
		if err != nil {
			t.Fatalf("rewritten head %q: %v", serializeHead(h), err)
		}
		if !reflect.DeepEqual(h, re) {
			t.Fatalf("rewritten head parses differently: %+v vs %+v", h, re)
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzParseTargetHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, v string) {
		u, err := ParseTargetHeader(v)
		if err != nil {
			if u != nil {
				t.Fatal("URL returned with an error")
			}
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			t.Fatalf("%q: scheme %q", v, u.Scheme)
		}
		if u.Host == "" || u.Hostname() == "" || u.Opaque != "" || u.User != nil || u.Fragment != "" {
			t.Fatalf("%q: accepted %#v", v, u)
		}
		for _, c := range v {
			if c < ' ' || c == 0x7f {
				t.Fatalf("%q: accepted a control character", v)
			}
		}
		// What goes on the wire: the request line (URL or its request URI)
		// and the Host header. Neither may carry a byte that ends or splits
		// a line or field.
		s := u.String()
		if bad := strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }); bad >= 0 {
			t.Fatalf("%q: outgoing URL %q has %q", v, s, s[bad])
		}
		if strings.ContainsAny(u.Host, " \t\r\n\x00/?#@\\") {
			t.Fatalf("%q: Host %q", v, u.Host)
		}
		for _, c := range u.Hostname() {
			if c < ' ' || c == 0x7f {
				t.Fatalf("%q: host name %q has a control character", v, u.Hostname())
			}
		}
		hp := hostPort(u)
		_, port, err := net.SplitHostPort(hp)
		if err != nil {
			t.Fatalf("%q: hostPort %q: %v", v, hp, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			t.Fatalf("%q: port %q", v, port)
		}
		j, err := joinTarget(u, "/p?q=1")
		if err != nil {
			t.Fatalf("%q: join: %v", v, err)
		}
		if ru := j.RequestURI(); !strings.HasPrefix(ru, "/") || strings.ContainsFunc(ru, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			t.Fatalf("%q: joined request URI %q", v, ru)
		}
		// Accepting is stable: the URL the agent uses parses to itself.
		u2, err := ParseTargetHeader(s)
		if err != nil {
			t.Fatalf("%q: accepted, but its own form %q is refused: %v", v, s, err)
		}
		if u2.String() != s {
			t.Fatalf("%q: %q re-parses as %q", v, s, u2.String())
		}
	})
}

// headerFields splits a fuzzed header block into fields without validation,
// to drive RequestFraming with names and values the parser would refuse.
func headerFields(block string) Fields {
	var fs Fields
	for _, line := range strings.Split(block, "\n") {
		name, value, ok := strings.Cut(strings.TrimSuffix(line, "\r"), ":")
		if !ok {
			continue
		}
		fs = append(fs, Field{Name: name, Value: strings.Trim(value, " \t")})
	}
	return fs
}

func FuzzRequestFraming(f *testing.F) {
	f.Fuzz(func(t *testing.T, block string, body []byte) {
		fields := headerFields(block)
		framing, n, err := RequestFraming(fields)
		te, cl := fields.Values("Transfer-Encoding"), fields.Values("Content-Length")
		if err != nil {
			var he *HeadError
			if !errors.As(err, &he) || (he.Status != 400 && he.Status != 501) {
				t.Fatalf("error %v", err)
			}
			return
		}
		switch framing {
		case NoBody:
			if len(te) > 0 || n != 0 {
				t.Fatalf("no body with Transfer-Encoding %q, n %d", te, n)
			}
			for _, v := range cl {
				for _, p := range strings.Split(v, ",") {
					p = strings.Trim(p, " \t")
					if p == "" || strings.Trim(p, "0") != "" {
						t.Fatalf("no body, but Content-Length %q", cl)
					}
				}
			}
		case Sized:
			if len(te) > 0 || n <= 0 {
				t.Fatalf("sized body n=%d with Transfer-Encoding %q", n, te)
			}
			// RFC 9110: Content-Length = 1*DIGIT, list parts separated by
			// OWS (SP and HTAB only).
			for _, v := range cl {
				for _, p := range strings.Split(v, ",") {
					p = strings.Trim(p, " \t")
					if p == "" || strings.Trim(p, "0123456789") != "" {
						t.Fatalf("Content-Length %q accepted (part %q is not digits)", cl, p)
					}
					if m, err := strconv.ParseInt(p, 10, 64); err != nil || m != n {
						t.Fatalf("Content-Length %q framed as %d", cl, n)
					}
				}
			}
			br := bufio.NewReader(bytes.NewReader(body))
			got, err := io.ReadAll(&sizedBody{r: br, n: n})
			switch {
			case int64(len(body)) >= n:
				if err != nil || int64(len(got)) != n {
					t.Fatalf("sized %d: read %d, %v", n, len(got), err)
				}
				if rest, _ := io.ReadAll(br); !bytes.Equal(rest, body[n:]) {
					t.Fatal("sized body read past its end")
				}
			default:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("short sized body: %v", err)
				}
			}
		case Chunked:
			if len(cl) > 0 || len(te) != 1 || n != -1 || !strings.EqualFold(strings.Trim(te[0], " \t"), "chunked") {
				t.Fatalf("chunked with Content-Length %q, Transfer-Encoding %q, n %d", cl, te, n)
			}
			checkChunked(t, body)
		default:
			t.Fatalf("framing %d", framing)
		}
	})
}

// checkChunked decodes body as the server does and, where net/http accepts
// the same bytes too, checks both agree on the content and on where the
// body ends (so no byte of it can be taken for a next request).
func checkChunked(t *testing.T, body []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(body))
	got, err := io.ReadAll(&limitedBody{r: newChunkedBody(br), max: 1 << 20})
	if err != nil {
		var he *HeadError
		if !errors.As(err, &he) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Fatalf("chunked body error %v (%T) is not a client error", err, err)
		}
		return
	}
	rest, _ := io.ReadAll(br)

	rb := bufio.NewReader(io.MultiReader(
		strings.NewReader("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), bytes.NewReader(body)))
	req, err := http.ReadRequest(rb)
	if err != nil {
		t.Fatalf("reference request: %v", err)
	}
	want, err := io.ReadAll(req.Body)
	if err != nil {
		return // net/http is stricter here
	}
	wantRest, _ := io.ReadAll(rb)
	if !bytes.Equal(got, want) {
		t.Fatalf("chunked body decodes to %q, net/http %q", got, want)
	}
	if !bytes.Equal(rest, wantRest) {
		t.Fatalf("chunked body ends before %q, net/http before %q", rest, wantRest)
	}
}
