package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// tunnelAnswer sends a CONNECT with extra header lines and returns the
// agent's answer; on 200 the tunnel stays open until the test ends.
func (e *env) tunnelAnswer(t *testing.T, authority string, extra ...string) (net.Conn, *http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	head := "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n"
	for _, h := range extra {
		head += h + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", authority, err)
	}
	var body string
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
	}
	return c, resp, body
}

// TestE2EClientTunnelLimit: one client (a key; without auth an address)
// may hold MaxClientTunnels tunnels; one more is refused at once with 429,
// other clients are not affected, and a closed tunnel makes room. Before,
// one key could hold every IP of a target with idle tunnels.
func TestE2EClientTunnelLimit(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	authority := strings.TrimPrefix(o.URL, "http://")
	a := mustAuth(t, auth.Config{Enabled: true, APIKeys: []auth.APIKey{
		{Name: "one", Key: "key-one", Targets: []string{"*"}},
		{Name: "two", Key: "key-two", Targets: []string{"*"}},
	}})
	e := newEnv(t, envOptions{upstreams: 6, cfg: pool.Config{MaxQueueWait: 10 * time.Second},
		opts: Options{Auth: a, MaxClientTunnels: 2}})
	one, two := "X-Proxy-Hopper-Auth: Bearer key-one", "X-Proxy-Hopper-Auth: Bearer key-two"
	var open []net.Conn
	for range 2 {
		c, resp, body := e.tunnelAnswer(t, authority, one)
		if resp.StatusCode != 200 {
			t.Fatalf("tunnel of key one: %d %s", resp.StatusCode, body)
		}
		open = append(open, c)
	}
	start := time.Now()
	_, resp, body := e.tunnelAnswer(t, authority, one)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, `"client_tunnels_limit"`) {
		t.Fatalf("third tunnel of key one: %d %s; want 429 client_tunnels_limit", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the refusal took %v; want it at once", d)
	}
	for range 2 {
		if _, resp, body := e.tunnelAnswer(t, authority, two); resp.StatusCode != 200 {
			t.Fatalf("tunnel of key two: %d %s", resp.StatusCode, body)
		}
	}
	open[0].Close()
	testenv.Eventually(t, 5*time.Second, func() error {
		_, r, _ := e.tunnelAnswer(t, authority, one)
		if r.StatusCode != 200 {
			return errors.New("still waiting for key one's closed tunnel to be released")
		}
		return nil
	})
	// Requests are counted apart from tunnels: key one still gets them.
	req := e.newReq(t, "GET", o.URL, "/", nil)
	req.Header.Set(HeaderAuth, "Bearer key-one")
	if resp, body := do(t, e.headerClient(), req); resp.StatusCode != 200 {
		t.Fatalf("request of key one: %d %s", resp.StatusCode, body)
	}
}

// TestE2EClientRequestLimit: without auth a client is its address; its
// requests in flight are capped, and the bookkeeping is empty once they
// end.
func TestE2EClientRequestLimit(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "done")
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the origin closes: it waits for its handlers
	e := newEnv(t, envOptions{upstreams: 4, opts: Options{MaxClientRequests: 2}})
	c := e.headerClient()
	results := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := c.Do(e.newReq(t, "GET", o.URL, "/slow", nil))
			if err != nil {
				results <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- resp.StatusCode
		}()
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(o.requests()) != 2 {
			return errors.New("still waiting for two slow requests at the origin")
		}
		return nil
	})
	resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/fast", nil))
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, `"client_requests_limit"`) {
		t.Fatalf("third request: %d %s; want 429 client_requests_limit", resp.StatusCode, body)
	}
	unblock()
	for range 2 {
		if s := <-results; s != 200 {
			t.Fatalf("slow request: %d", s)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.srv.inflight.entries() != 0 {
			return errors.New("still waiting for the per-client counts to drain")
		}
		return nil
	})
	if resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/fast", nil)); resp.StatusCode != 200 {
		t.Fatalf("request after the slow ones ended: %d %s", resp.StatusCode, body)
	}
}

// TestE2EQueueFull: with maxQueueLength requests waiting for the only IP,
// one more gets 503 queue_full at once, not after maxQueueWait.
func TestE2EQueueFull(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	authority := strings.TrimPrefix(o.URL, "http://")
	e := newEnv(t, envOptions{upstreams: 1, cfg: pool.Config{MaxQueueWait: time.Minute, MaxQueueLength: 1}})
	// The tunnel holds the only IP; one CONNECT waits for it.
	tun, _ := e.dialConnect(t, authority)
	waiter, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	io.WriteString(waiter, "CONNECT "+authority+" HTTP/1.1\r\nHost: "+authority+"\r\n\r\n")
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.pool().Waiting() != 1 {
			return errors.New("still waiting for one request waiting for an IP")
		}
		return nil
	})
	start := time.Now()
	resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
	doc := decodeError(t, resp, body)
	if resp.StatusCode != http.StatusServiceUnavailable || doc.Error != "queue_full" {
		t.Fatalf("request beyond the queue cap: %d %s; want 503 queue_full", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the refusal took %v; want it at once", d)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, r := range e.requestLog() {
			if r.Outcome == OutcomeQueueFull && r.Status == 503 && r.Target == "t1" {
				return nil
			}
		}
		return errors.New("still waiting for the refusal's request event")
	})
	// The waiter gets the IP when the tunnel ends.
	tun.Close()
	_ = waiter.SetDeadline(time.Now().Add(10 * time.Second))
	r, err := http.ReadResponse(bufio.NewReader(waiter), &http.Request{Method: http.MethodConnect})
	if err != nil || r.StatusCode != 200 {
		t.Fatalf("waiting CONNECT: %v %v", r, err)
	}
}
