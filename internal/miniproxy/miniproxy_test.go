package miniproxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func start(t *testing.T, opts Options) *Proxy {
	t.Helper()
	p, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// client goes through p, like the agent does (absolute-form, CONNECT).
func client(p *Proxy, user *url.Userinfo) *http.Client {
	u := p.URL()
	u.User = user
	tr := &http.Transport{Proxy: http.ProxyURL(u), MaxIdleConnsPerHost: 16, DisableCompression: true}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s: %v", u, err)
	}
	return resp, string(b)
}

func TestForwardKeepAliveAndHopHeaders(t *testing.T) {
	var originConns atomic.Int64
	var seen http.Header
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.Header().Set("Connection", "X-Drop-Me")
		w.Header().Set("X-Drop-Me", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Kept", "yes")
		fmt.Fprintf(w, "hello %s %s", r.Method, r.URL.RequestURI())
	}))
	origin.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			originConns.Add(1)
		}
	}
	origin.Start()
	defer origin.Close()
	p := start(t, Options{})
	c := client(p, nil)

	var reused int
	for i := range 20 {
		req, _ := http.NewRequest("GET", origin.URL+"/p?i="+fmt.Sprint(i), nil)
		req.Header.Set("Connection", "X-Secret")
		req.Header.Set("X-Secret", "hop")
		req.Header.Set("X-End", "e2e")
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) {
				if i.Reused {
					reused++
				}
			},
		}))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("hello GET /p?i=%d", i); string(b) != want {
			t.Fatalf("body %q, want %q", b, want)
		}
		if resp.Header.Get("X-Drop-Me") != "" || resp.Header.Get("Keep-Alive") != "" {
			t.Errorf("hop-by-hop response headers reached the client: %v", resp.Header)
		}
		if resp.Header.Get("X-Kept") != "yes" {
			t.Errorf("end-to-end response header lost: %v", resp.Header)
		}
	}
	if seen.Get("X-Secret") != "" || seen.Get("Proxy-Connection") != "" || seen.Get("Connection") != "" {
		t.Errorf("hop-by-hop request headers reached the origin: %v", seen)
	}
	if seen.Get("X-End") != "e2e" {
		t.Errorf("end-to-end request header lost: %v", seen)
	}
	if reused < 19 {
		t.Errorf("client connection reused %d/19 times", reused)
	}
	if n := originConns.Load(); n != 1 {
		t.Errorf("origin saw %d connections for 20 sequential requests, want 1 (keep-alive)", n)
	}
	if s := p.Stats(); s.Requests != 20 || s.Forwarded != 20 {
		t.Errorf("stats %+v, want 20 requests forwarded", s)
	}
}

func TestBodiesStream(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	}))
	defer origin.Close()
	p := start(t, Options{})
	c := client(p, nil)

	data := make([]byte, 5<<20)
	rand.Read(data)
	want := fmt.Sprintf("%d %x", len(data), sha256.Sum256(data))
	for _, tc := range []struct {
		name string
		body io.Reader
	}{
		{"sized", bytes.NewReader(data)},
		{"chunked", io.MultiReader(bytes.NewReader(data[:1<<20]), bytes.NewReader(data[1<<20:]))}, // unknown length
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.Post(origin.URL+"/upload", "application/octet-stream", tc.body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if string(b) != want {
				t.Fatalf("origin got %q, want %q", b, want)
			}
		})
	}
}

// A response of unknown length reaches the client while the origin is
// still writing it.
func TestResponseStreams(t *testing.T) {
	release := make(chan struct{})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	}))
	defer origin.Close()
	defer close(release)
	p := start(t, Options{})
	resp, err := client(p, nil).Get(origin.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "first\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first chunk held back by the proxy")
	}
}

// Responses without a body (204, 304, HEAD) keep their framing, and the
// connection stays usable after them.
func TestBodilessResponses(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		default:
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, "hello world")
		}
	}))
	defer origin.Close()
	p := start(t, Options{})
	c := client(p, nil)
	for _, tc := range []struct {
		method, path string
		status       int
		length       string
	}{
		{"GET", "/204", 204, ""},
		{"GET", "/304", 304, ""},
		{"HEAD", "/x", 200, "11"},
		{"GET", "/x", 200, "11"},
	} {
		req, _ := http.NewRequest(tc.method, origin.URL+tc.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get("Content-Length") != tc.length {
			t.Errorf("%s %s: %d, Content-Length %q; want %d, %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Length"), tc.status, tc.length)
		}
	}
}

func TestConnectTunnel(t *testing.T) {
	origin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "secure "+r.URL.Path)
	}))
	defer origin.Close()
	p := start(t, Options{})
	c := client(p, nil)
	c.Transport.(*http.Transport).TLSClientConfig = origin.Client().Transport.(*http.Transport).TLSClientConfig
	for range 3 {
		resp, body := get(t, c, origin.URL+"/x")
		if resp.StatusCode != 200 || body != "secure /x" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	}
	if s := p.Stats(); s.Tunnels != 1 {
		t.Errorf("stats %+v: want 1 tunnel (kept alive through it)", s)
	}
}

// The client half-closes after sending; the origin answers after reading
// to EOF; the answer must still come back through the tunnel, including
// bytes the client sent right behind its CONNECT head.
func TestConnectHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "got %d bytes", n)
			}()
		}
	}()
	p := start(t, Options{})
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := strings.Repeat("x", 100000)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\nearly", ln.Addr())
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if _, err := io.WriteString(c, payload); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("got %d bytes", len(payload)+len("early")); string(b) != want {
		t.Fatalf("got %q, want %q", b, want)
	}
}

func TestFaults(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Proxy-Authorization") != "" {
			t.Errorf("credentials for the proxy leaked to the origin")
		}
		io.WriteString(w, "ok")
	}))
	defer origin.Close()

	t.Run("rate limit", func(t *testing.T) {
		p := start(t, Options{RateLimitEvery: 3})
		c := client(p, nil)
		var got []int
		for range 9 {
			resp, body := get(t, c, origin.URL)
			got = append(got, resp.StatusCode)
			if resp.StatusCode == 429 && (!strings.Contains(body, "rate_limited") || len(body) > 200) {
				t.Errorf("429 body %q", body)
			}
		}
		if want := "[200 200 429 200 200 429 200 200 429]"; fmt.Sprint(got) != want {
			t.Errorf("statuses %v, want %s", got, want)
		}
		if s := p.Stats(); s.Requests != 9 || s.RateLimited != 3 || s.Forwarded != 6 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("delay", func(t *testing.T) {
		p := start(t, Options{Delay: 150 * time.Millisecond})
		t0 := time.Now()
		resp, _ := get(t, client(p, nil), origin.URL)
		if d := time.Since(t0); resp.StatusCode != 200 || d < 150*time.Millisecond {
			t.Errorf("status %d after %s, want 200 after ≥150ms", resp.StatusCode, d)
		}
	})
	t.Run("fail connect", func(t *testing.T) {
		p := start(t, Options{FailConnect: true})
		resp, _ := get(t, client(p, nil), origin.URL)
		if resp.StatusCode != 502 {
			t.Errorf("absolute-form: %d, want 502", resp.StatusCode)
		}
		tls := httptest.NewTLSServer(http.NotFoundHandler())
		defer tls.Close()
		_, err := client(p, nil).Get(tls.URL)
		if err == nil || !strings.Contains(err.Error(), "Bad Gateway") {
			t.Errorf("CONNECT through a fail-connect proxy: %v, want Bad Gateway", err)
		}
		if s := p.Stats(); s.Failed != 2 || s.Forwarded != 0 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("auth", func(t *testing.T) {
		p := start(t, Options{RequireAuth: "alice:s3cret"})
		resp, _ := get(t, client(p, nil), origin.URL)
		if resp.StatusCode != 407 || !strings.HasPrefix(resp.Header.Get("Proxy-Authenticate"), "Basic") {
			t.Errorf("no credentials: %d %v", resp.StatusCode, resp.Header)
		}
		resp, _ = get(t, client(p, url.UserPassword("alice", "wrong")), origin.URL)
		if resp.StatusCode != 407 {
			t.Errorf("wrong credentials: %d", resp.StatusCode)
		}
		resp, body := get(t, client(p, url.UserPassword("alice", "s3cret")), origin.URL)
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("right credentials: %d %q", resp.StatusCode, body)
		}
		if s := p.Stats(); s.AuthRejected != 2 || s.Forwarded != 1 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("bad options", func(t *testing.T) {
		for _, o := range []Options{{RequireAuth: "nocolon"}, {RateLimitEvery: -1}, {Delay: -time.Second}} {
			if _, err := Start(o); !errors.Is(err, ErrBadOptions) {
				t.Errorf("Start(%+v): %v, want ErrBadOptions", o, err)
			}
		}
	})
}

func TestErrors(t *testing.T) {
	p := start(t, Options{})
	// Origin-form is not a proxy request.
	resp, err := http.Get("http://" + p.Addr() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("origin-form: %d, want 400", resp.StatusCode)
	}
	// An origin with nothing listening.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	resp, _ = get(t, client(p, nil), "http://"+dead+"/")
	if resp.StatusCode != 502 {
		t.Errorf("dead origin: %d, want 502", resp.StatusCode)
	}
	if s := p.Stats(); s.BadRequests != 1 || s.Failed != 1 {
		t.Errorf("stats %+v", s)
	}
}

// Close ends idle keep-alive connections and live tunnels, and the port
// stops accepting.
func TestClose(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer origin.Close()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	p, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	// An idle keep-alive connection.
	idle, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET %s/ HTTP/1.1\r\nHost: x\r\n\r\n", origin.URL)
	ibr := bufio.NewReader(idle)
	resp, err := http.ReadResponse(ibr, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("keep-alive request: %v %v", resp, err)
	}
	io.ReadAll(resp.Body)
	// A live tunnel.
	tun, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	fmt.Fprintf(tun, "CONNECT %s HTTP/1.1\r\n\r\n", echo.Addr())
	tbr := bufio.NewReader(tun)
	if resp, err := http.ReadResponse(tbr, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(tun, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tbr, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through tunnel: %q %v", buf, err)
	}

	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
	for name, br := range map[string]*bufio.Reader{"idle": ibr, "tunnel": tbr} {
		c := map[string]net.Conn{"idle": idle, "tunnel": tun}[name]
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Errorf("%s connection after Close: %v, want EOF", name, err)
		}
	}
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		c.Close()
		t.Error("port still accepts after Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func BenchmarkForward(b *testing.B) {
	body := strings.Repeat("x", 512)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer origin.Close()
	p, err := Start(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	c := client(p, nil)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 256
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(origin.URL)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
