package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/mitm"
)

// interceptEnv is an agent intercepting the TLS of its target, with the
// CA its clients trust.
type interceptEnv struct {
	*env
	ca     *mitm.CA
	roots  *x509.CertPool // the interception CA
	mu     sync.Mutex
	events []TLSEvent
}

func newInterceptEnv(t *testing.T, o envOptions, http2 bool, bypass func(string) bool) *interceptEnv {
	t.Helper()
	certPEM, keyPEM, err := mitm.GenerateCA(mitm.CAOptions{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := mitm.ParseCA(certPEM, keyPEM, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m, err := mitm.NewMinter(ca, mitm.MinterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ie := &interceptEnv{ca: ca, roots: x509.NewCertPool()}
	ie.roots.AddCert(ca.Cert)
	o.opts.Intercept = InterceptOptions{Minter: m, Bypass: bypass, HTTP2: http2}
	o.opts.Hooks.TLS = func(ev TLSEvent) {
		ie.mu.Lock()
		ie.events = append(ie.events, ev)
		ie.mu.Unlock()
	}
	ie.env = newEnv(t, o)
	ie.targets[0].Intercept = true
	return ie
}

func (ie *interceptEnv) tlsEvents() []TLSEvent {
	ie.mu.Lock()
	defer ie.mu.Unlock()
	return append([]TLSEvent(nil), ie.events...)
}

// client is an HTTPS client using the agent as its CONNECT proxy, with
// at most one connection, trusting roots.
func (ie *interceptEnv) client(t *testing.T, roots *x509.CertPool, h2 bool) *http.Client {
	t.Helper()
	tr := &http.Transport{
		Proxy:               http.ProxyURL(&url.URL{Scheme: "http", Host: ie.addr}),
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		ForceAttemptHTTP2:   h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	ie.mu.Lock()
	ie.clients = append(ie.clients, tr)
	ie.mu.Unlock()
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// Keep-alive HTTPS requests through one CONNECT, intercepted, each take
// an IP of their own; the client sees the agent's leaf for the host it
// asked for, over HTTP/1.1 and HTTP/2.
func TestInterceptConnectRotatesPerRequest(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		name := "http1.1"
		if h2 {
			name = "h2"
		}
		t.Run(name, func(t *testing.T) {
			o := newOrigin(t, true, nil)
			ie := newInterceptEnv(t, envOptions{upstreams: 3, tls: caOf(o)}, h2, nil)
			c := ie.client(t, ie.roots, h2)
			const n = 6
			for i := 0; i < n; i++ {
				resp, body := do(t, c, mustReq(t, "GET", o.URL+"/r"+string(rune('0'+i))))
				if resp.StatusCode != 200 || body != "GET /r"+string(rune('0'+i)) {
					t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
				}
				if h2 != (resp.ProtoMajor == 2) {
					t.Fatalf("request %d: protocol %s", i, resp.Proto)
				}
				if iss := resp.TLS.PeerCertificates[0].Issuer.CommonName; iss != ie.ca.Cert.Subject.CommonName {
					t.Fatalf("leaf issued by %q, want the interception CA", iss)
				}
			}
			if got := ie.accepted.Load(); got != 1 {
				t.Fatalf("client connections = %d, want 1 (keep-alive)", got)
			}
			atts := ie.attemptsN(t, n)
			for i := 1; i < len(atts); i++ {
				if atts[i].Addr == atts[i-1].Addr {
					t.Errorf("requests %d and %d both went through %s", i-1, i, atts[i].Addr)
				}
				if atts[i].Mode != "intercept" || atts[i].Tunnel() {
					t.Errorf("attempt %d: mode %q", i, atts[i].Mode)
				}
			}
			ev := ie.tlsEvents()
			want := "http/1.1"
			if h2 {
				want = "h2"
			}
			if len(ev) != 1 || ev[0].Handling != TLSIntercepted || ev[0].Proto != want || ev[0].Mode != "connect" {
				t.Fatalf("TLS events = %+v", ev)
			}
			if got := len(o.requests()); got != n {
				t.Fatalf("origin saw %d requests, want %d", got, n)
			}
		})
	}
}

// A 429 inside an intercepted connection is retried on another IP, as
// for plain HTTP.
func TestInterceptRetries429OnAnotherIP(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1.1", true: "h2"}[h2], func(t *testing.T) {
			var calls atomic.Int32
			o := newOrigin(t, true, func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				io.WriteString(w, "ok")
			})
			ie := newInterceptEnv(t, envOptions{upstreams: 3, tls: caOf(o), retries: 2}, h2, nil)
			resp, body := do(t, ie.client(t, ie.roots, h2), mustReq(t, "GET", o.URL+"/x"))
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			atts := ie.attemptsN(t, 2)
			if atts[0].Status != 429 || atts[1].Status != 200 || atts[0].Addr == atts[1].Addr {
				t.Fatalf("attempts = %+v", atts)
			}
		})
	}
}

// Failures: an origin whose certificate does not verify gets the client
// a 502 (never an unverified connection); a client that does not trust
// the interception CA fails its handshake (counted by reason); a request
// for another host than the CONNECT's is 421; an SNI naming another host
// than the CONNECT is refused before any leaf is minted; a bypassed host
// is tunnelled with the origin's own certificate.
func TestInterceptFailures(t *testing.T) {
	o := newOrigin(t, true, nil)
	t.Run("origin certificate not trusted", func(t *testing.T) {
		ie := newInterceptEnv(t, envOptions{upstreams: 2, retries: 1}, false, nil) // system roots only
		resp, body := do(t, ie.client(t, ie.roots, false), mustReq(t, "GET", o.URL+"/x"))
		if resp.StatusCode != http.StatusBadGateway || decodeError(t, resp, body).Error != ReasonOriginCertificate {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if len(o.requests()) != 0 {
			t.Fatal("the origin was sent the request over an unverified connection")
		}
		t.Logf("answer: %s", body)
	})
	t.Run("client rejects the leaf", func(t *testing.T) {
		ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o)}, false, nil)
		_, err := ie.client(t, x509.NewCertPool(), false).Get(o.URL + "/x")
		if err == nil {
			t.Fatal("a client without the CA accepted the leaf")
		}
		testenvEventually(t, func() bool {
			ev := ie.tlsEvents()
			return len(ev) == 1 && ev[0].Handling == TLSFailed && ev[0].Reason == HandshakeClientRejected
		}, func() string { return "TLS events: " + toJSON(ie.tlsEvents()) })
		// The CONNECT ends with the handshake, as a failed one.
		testenvEventually(t, func() bool {
			r := ie.requestLog()
			return len(r) == 1 && r[0].Mode == "connect" && r[0].Outcome == OutcomeHandshakeFailed
		}, func() string { return "requests: " + toJSON(ie.requestLog()) })
	})
	t.Run("curl rejects the leaf", func(t *testing.T) {
		// OpenSSL clients reject the leaf with a plaintext alert, which
		// crypto/tls reads as a bad record MAC: counted as a rejection too.
		ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o)}, false, nil)
		other := filepath.Join(t.TempDir(), "other-ca.pem")
		if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.Certificate().Raw}), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := curl(t, "-x", "http://"+ie.addr, "--cacert", other, o.URL+"/x"); err == nil || !strings.Contains(err.Error(), "exit status 60") {
			t.Fatalf("curl without the interception CA: %v %q, want exit 60", err, out)
		}
		testenvEventually(t, func() bool {
			ev := ie.tlsEvents()
			return len(ev) == 1 && ev[0].Handling == TLSFailed && ev[0].Reason == HandshakeClientRejected
		}, func() string { return "TLS events: " + toJSON(ie.tlsEvents()) })
	})
	t.Run("another host", func(t *testing.T) {
		ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o)}, false, nil)
		host := strings.TrimPrefix(o.URL, "https://")
		c, _ := ie.dialConnect(t, host)
		tc := tls.Client(c, &tls.Config{RootCAs: ie.roots, ServerName: "127.0.0.1"})
		io.WriteString(tc, "GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
		resp, body := readRawResponse(t, bufio.NewReader(tc), "GET")
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("SNI mismatch", func(t *testing.T) {
		ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o)}, false, nil)
		c, _ := ie.dialConnect(t, strings.TrimPrefix(o.URL, "https://"))
		tc := tls.Client(c, &tls.Config{RootCAs: ie.roots, ServerName: "random-name.example"})
		if err := tc.Handshake(); err == nil {
			t.Fatal("handshake with a foreign SNI succeeded")
		}
		testenvEventually(t, func() bool {
			ev := ie.tlsEvents()
			return len(ev) == 1 && ev[0].Reason == HandshakeSNIMismatch
		}, func() string { return "TLS events: " + toJSON(ie.tlsEvents()) })
		if st := ie.opts().Intercept.Minter.Stats(); st.Mints != 0 {
			t.Fatalf("minted %d leaves for a refused SNI", st.Mints)
		}
	})
	t.Run("bypassed", func(t *testing.T) {
		ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o)}, false, func(h string) bool { return h == "127.0.0.1" })
		resp, _ := do(t, ie.client(t, caOf(o).RootCAs, false), mustReq(t, "GET", o.URL+"/x"))
		if resp.StatusCode != 200 || resp.TLS.PeerCertificates[0].Issuer.CommonName == ie.ca.Cert.Subject.CommonName {
			t.Fatalf("bypassed host: %d, issuer %q", resp.StatusCode, resp.TLS.PeerCertificates[0].Issuer.CommonName)
		}
		if ev := ie.tlsEvents(); len(ev) != 1 || ev[0].Handling != TLSBypassed {
			t.Fatalf("TLS events = %+v", ev)
		}
	})
}

// A WebSocket upgrade inside an intercepted connection passes through on
// one IP for its lifetime.
func TestInterceptWebSocketUpgrade(t *testing.T) {
	o := newOrigin(t, true, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		for { // echo lines
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo " + line)
			brw.Flush()
		}
	})
	ie := newInterceptEnv(t, envOptions{upstreams: 2, tls: caOf(o)}, false, nil)
	c, _ := ie.dialConnect(t, strings.TrimPrefix(o.URL, "https://"))
	tc := tls.Client(c, &tls.Config{RootCAs: ie.roots, ServerName: "127.0.0.1"})
	io.WriteString(tc, "GET /ws HTTP/1.1\r\nHost: "+strings.TrimPrefix(o.URL, "https://")+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for _, m := range []string{"one\n", "two\n"} {
		io.WriteString(tc, m)
		got, err := br.ReadString('\n')
		if err != nil || got != "echo "+m {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	tc.Close()
	atts := ie.attemptsN(t, 1)
	if len(atts) != 1 {
		t.Fatalf("attempts = %+v", atts)
	}
}

func (e *env) opts() Options { return e.srv.opts }

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// testenvEventually waits up to 5s for cond.
func testenvEventually(t *testing.T, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An HTTP/2 stream the client resets ends its request; the connection
// goes on serving the client's other streams.
func TestInterceptH2StreamReset(t *testing.T) {
	release := make(chan struct{})
	o := newOrigin(t, true, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-time.After(5 * time.Second):
			}
		}
		io.WriteString(w, "ok "+r.URL.Path)
	})
	ie := newInterceptEnv(t, envOptions{upstreams: 2, tls: caOf(o)}, true, nil)
	c := ie.client(t, ie.roots, true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", o.URL+"/slow", nil)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("the slow request was answered before its reset")
	}
	for i := 0; i < 3; i++ {
		resp, body := do(t, c, mustReq(t, "GET", o.URL+"/fast"))
		if resp.StatusCode != 200 || body != "ok /fast" || resp.ProtoMajor != 2 {
			t.Fatalf("after the reset: %d %q %s", resp.StatusCode, body, resp.Proto)
		}
	}
	close(release)
	if got := ie.accepted.Load(); got != 1 {
		t.Fatalf("client connections = %d, want 1", got)
	}
	// The reset request ends too (its answer has no one to go to).
	testenvEventually(t, func() bool { return len(ie.requestLog()) == 4 }, func() string { return toJSON(ie.requestLog()) })
}

// recordTail finds a plaintext certificate alert as the client's latest
// record however the bytes are split across reads; an encrypted record,
// another alert or an unfinished record is not one.
func TestRecordTailPlaintextAlert(t *testing.T) {
	hello := append([]byte{22, 3, 1, 0, 4}, 1, 0, 0, 0)
	ccs := []byte{20, 3, 3, 0, 1, 1}
	for _, tc := range []struct {
		name   string
		stream []byte
		want   bool
	}{
		{"unknown_ca", concat(hello, ccs, []byte{21, 3, 3, 0, 2, 2, 48}), true},
		{"bad_certificate", concat(hello, []byte{21, 3, 3, 0, 2, 2, 42}), true},
		{"protocol_version", concat(hello, []byte{21, 3, 3, 0, 2, 2, 70}), false},
		{"encrypted", concat(hello, []byte{23, 3, 3, 0, 19}, make([]byte, 19)), false},
		{"alert then more", concat(hello, []byte{21, 3, 3, 0, 2, 2, 48}, ccs), false},
		{"unfinished alert", concat(hello, []byte{21, 3, 3, 0, 2, 2}), false},
		{"empty record", concat(hello, []byte{21, 3, 3, 0, 0}), false},
	} {
		for split := 0; split <= len(tc.stream); split++ {
			var r recordTail
			r.feed(tc.stream[:split])
			r.feed(tc.stream[split:])
			if got := r.rejectedCertificate(); got != tc.want {
				t.Errorf("%s split at %d: %v, want %v", tc.name, split, got, tc.want)
			}
		}
		var r recordTail
		for i := range tc.stream {
			r.feed(tc.stream[i : i+1])
		}
		if got := r.rejectedCertificate(); got != tc.want {
			t.Errorf("%s byte by byte: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// Request bodies inside an intercepted connection reach the origin whole,
// of known and unknown length, over HTTP/1.1 and h2; large answers come
// back whole.
func TestInterceptBodies(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	o := newOrigin(t, true, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		if r.URL.Path == "/big" {
			io.WriteString(w, big)
			return
		}
		io.WriteString(w, r.Method+" "+strconv.Itoa(len(b))+" "+strconv.FormatInt(r.ContentLength, 10))
	})
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1.1", true: "h2"}[h2], func(t *testing.T) {
			ie := newInterceptEnv(t, envOptions{upstreams: 2, tls: caOf(o)}, h2, nil)
			c := ie.client(t, ie.roots, h2)
			body := strings.Repeat("x", 300<<10)
			req, _ := http.NewRequest("POST", o.URL+"/p", strings.NewReader(body))
			resp, got := do(t, c, req)
			if resp.StatusCode != 200 || got != "POST 307200 307200" {
				t.Fatalf("known length: %d %q", resp.StatusCode, got)
			}
			pr, pw := io.Pipe()
			go func() {
				for i := 0; i < 10; i++ {
					pw.Write([]byte(strings.Repeat("y", 1000)))
				}
				pw.Close()
			}()
			req, _ = http.NewRequest("PUT", o.URL+"/p", pr)
			resp, got = do(t, c, req)
			if resp.StatusCode != 200 || !strings.HasPrefix(got, "PUT 10000 ") {
				t.Fatalf("unknown length: %d %q", resp.StatusCode, got)
			}
			resp, got = do(t, c, mustReq(t, "GET", o.URL+"/big"))
			if resp.StatusCode != 200 || got != big {
				t.Fatalf("big answer: %d, %d bytes", resp.StatusCode, len(got))
			}
			if got := ie.accepted.Load(); got != 1 {
				t.Fatalf("client connections = %d, want 1", got)
			}
		})
	}
}

// The agent's own answers reach h2 clients as HTTP/2 responses: a request
// for another host than the connection's is 421 with the JSON error, and
// the connection goes on.
func TestInterceptH2AgentAnswers(t *testing.T) {
	o := newOrigin(t, true, nil)
	ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o)}, true, nil)
	c := ie.client(t, ie.roots, true)
	req := mustReq(t, "GET", o.URL+"/x")
	req.Host = "other.example"
	resp, body := do(t, c, req)
	if resp.StatusCode != http.StatusMisdirectedRequest || resp.ProtoMajor != 2 || !strings.Contains(body, "is for 127.0.0.1:") {
		t.Fatalf("other host: %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	resp, body = do(t, c, mustReq(t, "GET", o.URL+"/y"))
	if resp.StatusCode != 200 || body != "GET /y" {
		t.Fatalf("next request: %d %q", resp.StatusCode, body)
	}
	if got := ie.accepted.Load(); got != 1 {
		t.Fatalf("client connections = %d, want 1", got)
	}
}

// A client that opens an intercepted CONNECT and never sends its
// ClientHello is closed at headerTimeout, counted as a timeout; nothing
// is minted for it.
func TestInterceptSilentClientTimesOut(t *testing.T) {
	o := newOrigin(t, true, nil)
	ie := newInterceptEnv(t, envOptions{upstreams: 1, tls: caOf(o), opts: Options{HeaderTimeout: 300 * time.Millisecond}}, false, nil)
	c, _ := ie.dialConnect(t, strings.TrimPrefix(o.URL, "https://"))
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a silent intercepted connection", n)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %s, want about headerTimeout (300ms)", d)
	}
	testenvEventually(t, func() bool {
		ev := ie.tlsEvents()
		return len(ev) == 1 && ev[0].Handling == TLSFailed && ev[0].Reason == HandshakeTimeout
	}, func() string { return "TLS events: " + toJSON(ie.tlsEvents()) })
	if st := ie.opts().Intercept.Minter.Stats(); st.Mints != 0 {
		t.Fatalf("minted %d leaves for a silent client", st.Mints)
	}
}
