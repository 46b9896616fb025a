package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// hostileCap is how much a hostile peer writes at most: far more than any
// head limit plus loopback socket buffers, so a peer that could write it
// all was read without a limit.
const hostileCap = 48 << 20

// hostileWriter answers every connection on ip with first (after reading
// the request head), then an endless stream of header lines until the
// agent stops reading or hostileCap bytes went out. It reports whether a
// connection's writes were refused before the cap.
type hostileWriter struct {
	addr    string
	refused atomic.Int32 // connections whose writes failed before the cap
	capped  atomic.Int32 // connections that wrote the whole cap
}

func startHostile(t *testing.T, ip string, first string, line string, serveTLS func(net.Conn) net.Conn) *hostileWriter {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileWriter{addr: l.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				var rw net.Conn = c
				if serveTLS != nil {
					rw = serveTLS(c)
				}
				if _, err := http.ReadRequest(bufio.NewReader(rw)); err != nil {
					return
				}
				if _, err := io.WriteString(rw, first); err != nil {
					h.refused.Add(1)
					return
				}
				if line == "" {
					_, _ = io.Copy(io.Discard, rw) // until the agent closes
					return
				}
				chunk := []byte(strings.Repeat(line, (32<<10)/len(line)))
				for sent := 0; sent < hostileCap; sent += len(chunk) {
					if _, err := rw.Write(chunk); err != nil {
						h.refused.Add(1)
						return
					}
				}
				h.capped.Add(1)
			}()
		}
	}()
	return h
}

// TestUpstreamHeadBounded: an upstream proxy that answers with an endless
// head (to CONNECT, to an absolute-form request) or with too many fields
// gets the client a 502 naming the reason, the agent stops reading at the
// head limit, and the attempt counts against the IP: the proxy misbehaved.
func TestUpstreamHeadBounded(t *testing.T) {
	long := "X-Filler: " + strings.Repeat("a", 90) + "\r\n"
	cases := []struct {
		name, first, line, reason string
		connect                   bool
	}{
		{"connect endless head", "HTTP/1.1 200 Connection established\r\n", long, "connect_head_too_large", true},
		{"connect endless line", "HTTP/1.1 200 Connection established\r\nX-Long: ", "a", "connect_head_too_large", true},
		{"absolute-form endless head", "HTTP/1.1 200 OK\r\n", long, "upstream_head_too_large", false},
		{"absolute-form endless status line", "HTTP/1.1 200 ", "O", "upstream_head_too_large", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startHostile(t, "127.0.0.2", tc.first, tc.line, nil)
			e := newEnv(t, envOptions{extraAddrs: []string{up.addr}, retries: 0, quiet: true})
			var status int
			var body string
			if tc.connect {
				c, err := net.Dial("tcp", e.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				io.WriteString(c, "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
				resp, b := readRawResponse(t, bufio.NewReader(c), http.MethodConnect)
				status, body = resp.StatusCode, b
			} else {
				resp, b := do(t, e.proxyClient(), mustReq(t, "GET", "http://127.0.0.1:9/x"))
				status, body = resp.StatusCode, b
			}
			if status != http.StatusBadGateway || !strings.Contains(body, tc.reason) {
				t.Fatalf("answer %d %s: want 502 naming %s", status, body, tc.reason)
			}
			testenv.Eventually(t, 5*time.Second, func() error {
				if up.refused.Load()+up.capped.Load() <= 0 {
					return errors.New("still waiting for the hostile upstream to stop")
				}
				return nil
			})
			if up.capped.Load() != 0 {
				t.Fatalf("the agent read the whole %d-byte head", hostileCap)
			}
			a := e.attemptsN(t, 1)
			if a[0].OK || a[0].Reason != tc.reason {
				t.Errorf("attempt %+v: want a failure counted against the IP, reason %s", a[0], tc.reason)
			}
		})
	}
}

// TestUpstreamHeadTooManyFields: a small head with more than 1000 fields
// is refused as well.
func TestUpstreamHeadTooManyFields(t *testing.T) {
	first := "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-F: 1\r\n", 1500) + "Content-Length: 0\r\n\r\n"
	up := startHostile(t, "127.0.0.2", first, "", nil)
	e := newEnv(t, envOptions{extraAddrs: []string{up.addr}, quiet: true})
	resp, body := do(t, e.proxyClient(), mustReq(t, "GET", "http://127.0.0.1:9/x"))
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "upstream_head_too_large") {
		t.Fatalf("answer %d %s: want 502 upstream_head_too_large", resp.StatusCode, body)
	}
}

// TestOriginHeadBounded: an https origin (the agent speaks TLS to it
// through the tunnel) sending an endless head gets the client a 502 at
// once, without retries, and without counting against the IP: the proxy
// did nothing wrong.
func TestOriginHeadBounded(t *testing.T) {
	var refused, capped atomic.Int32
	o := newOrigin(t, true, func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		brw.WriteString("HTTP/1.1 200 OK\r\n")
		chunk := []byte(strings.Repeat("X-Filler: "+strings.Repeat("b", 90)+"\r\n", 300))
		for sent := 0; sent < hostileCap; sent += len(chunk) {
			if _, err := brw.Write(chunk); err != nil {
				refused.Add(1)
				return
			}
		}
		if brw.Flush() != nil {
			refused.Add(1)
			return
		}
		capped.Add(1)
	})
	e := newEnv(t, envOptions{upstreams: 2, retries: 2, tls: caOf(o), quiet: true})
	resp, body := e.headerGet(t, o.URL, "/big", nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, reasonOriginHeadTooLarge) {
		t.Fatalf("answer %d %s: want 502 %s", resp.StatusCode, body, reasonOriginHeadTooLarge)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if refused.Load()+capped.Load() <= 0 {
			return errors.New("still waiting for the origin to stop")
		}
		return nil
	})
	if capped.Load() != 0 {
		t.Fatalf("the agent read the whole %d-byte head", hostileCap)
	}
	a := e.attemptsN(t, 1)
	if len(a) != 1 || !a[0].OK || a[0].Reason != reasonOriginHeadTooLarge {
		t.Errorf("attempts %+v: want one attempt not counted against the IP", a)
	}
	for _, up := range e.upstream {
		st, err := e.pool().State(t.Context(), up.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if st.Failures != 0 || st.State == pool.StateQuarantined {
			t.Errorf("IP %s: %+v after an origin's fault", up.Addr, st)
		}
	}
}

func mustReq(t *testing.T, method, u string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
