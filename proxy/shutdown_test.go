package proxy

// Graceful shutdown as the agent does it: close the pool backend (queued
// requests get 503), then Server.Shutdown lets requests in flight finish.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

type result struct {
	status int
	body   string
	err    error
	at     time.Time
}

func sendAsync(c *http.Client, req *http.Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			ch <- result{err: err, at: time.Now()}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- result{status: resp.StatusCode, body: string(b), err: err, at: time.Now()}
	}()
	return ch
}

func TestShutdownGraceful(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 4)
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(500 * time.Millisecond)
		io.WriteString(w, "slow done")
	})
	e := newEnv(t, envOptions{upstreams: 1, cfg: pool.Config{MinRequestInterval: 0, MaxQueueWait: 30 * time.Second}})
	c := e.headerClient()

	inflight := sendAsync(c, e.newReq(t, "GET", o.URL, "/inflight", nil))
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("first request never reached the origin")
	}
	queued := sendAsync(c, e.newReq(t, "GET", o.URL, "/queued", nil))
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.backend.Waiting("t1") != 1 {
			return errors.New("still waiting for the second request to queue for the IP")
		}
		return nil
	})

	start := time.Now()
	e.backend.Close() // as agent.Run does: queued requests get 503 now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	took := time.Since(start)
	if err != nil {
		t.Errorf("Shutdown: %v, want nil (it took %s)", err, took)
	}
	if took >= 5*time.Second {
		t.Errorf("Shutdown took %s, the whole grace period", took)
	}

	q := <-queued
	if q.err != nil || q.status != http.StatusServiceUnavailable {
		t.Fatalf("queued request: %d %q %v, want 503", q.status, q.body, q.err)
	}
	if !strings.Contains(q.body, `"error":"server_shutdown"`) || !strings.Contains(q.body, `"target":"t1"`) {
		t.Errorf("queued request body %q", q.body)
	}
	r := <-inflight
	if r.err != nil || r.status != 200 || r.body != "slow done" {
		t.Errorf("in-flight request: %d %q %v, want 200 slow done", r.status, r.body, r.err)
	}
	if !q.at.Before(r.at) {
		t.Error("the queued request was answered only after the in-flight one finished")
	}
	if n := len(o.requests()); n != 1 {
		t.Errorf("origin saw %d requests, want only the in-flight one", n)
	}
	select {
	case err := <-e.served:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	case <-time.After(time.Second):
		t.Error("Serve did not return after Shutdown")
	}
	if cn, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
		cn.Close()
		t.Error("the agent still accepts connections after Shutdown")
	}
}

func TestShutdownClosesIdleConnections(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1})
	// A keep-alive connection left idle, and one that never sent a byte.
	cn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	io.WriteString(cn, "GET /k HTTP/1.1\r\nHost: a\r\n"+HeaderTarget+": "+o.URL+"\r\n\r\n")
	cn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	if n, err := cn.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		t.Fatalf("%q %v", buf[:n], err)
	}
	silent, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.accepted.Load() != 2 {
			return errors.New("still waiting for both connections accepted")
		}
		return nil
	})

	start := time.Now()
	e.backend.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Shutdown with only idle connections took %s", d)
	}
	for _, c := range []net.Conn{cn, silent} {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); err != io.EOF {
			t.Errorf("idle connection after Shutdown: %v, want EOF", err)
		}
	}
}

func TestShutdownDeadlineCutsRequests(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
	})
	defer close(release)
	addr := tcpOrigin(t, func(c *net.TCPConn) { io.Copy(c, c) })
	e := newEnv(t, envOptions{upstreams: 2, cfg: pool.Config{FailuresUntilQuarantine: 5}})
	slow := sendAsync(e.headerClient(), e.newReq(t, "GET", o.URL, "/hang", nil))
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(o.requests()) != 1 {
			return errors.New("still waiting for request at the origin")
		}
		return nil
	})
	tunnel, br := e.dialConnect(t, addr) // an open, quiet tunnel

	start := time.Now()
	e.backend.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want the context's error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown returned %s after its deadline", d)
	}
	if r := <-slow; r.err == nil && r.status == 200 {
		t.Errorf("a request cut by the deadline looks complete: %d %q", r.status, r.body)
	}
	tunnel.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("tunnel still open after the shutdown deadline")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("tunnel not closed at the shutdown deadline")
	}
}

// Cutting a request at the shutdown deadline is the agent's doing, not the
// upstream IP's: it must not count as the IP's failure (with a shared
// backend such as Redis the count outlives this agent and can quarantine a
// healthy IP during a rolling restart).
func TestShutdownDeadlineDoesNotChargeIPs(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
	})
	defer close(release)
	e := newEnv(t, envOptions{upstreams: 1, cfg: pool.Config{FailuresUntilQuarantine: 5}})
	slow := sendAsync(e.headerClient(), e.newReq(t, "GET", o.URL, "/hang", nil))
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(o.requests()) != 1 {
			return errors.New("still waiting for request at the origin")
		}
		return nil
	})
	e.backend.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	e.srv.Shutdown(ctx)
	<-slow
	for _, a := range e.attemptsN(t, 1) {
		if !a.OK {
			t.Errorf("attempt cut by the shutdown counted as a failure of %s (%s)", a.Addr, a.Reason)
		}
	}
	snap, _ := e.pool().Snapshot(context.Background())
	for _, s := range snap {
		if s.Failures != 0 {
			t.Errorf("%s has %d failures after the shutdown", s.Addr, s.Failures)
		}
	}
}

// A response finished while the agent drains says Connection: close, so
// the client does not send its next request on a connection the agent is
// about to close (net/http's server does the same).
func TestShutdownInFlightResponseSaysClose(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "done")
	})
	e := newEnv(t, envOptions{upstreams: 1})
	cn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	cn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(cn, "GET /slow HTTP/1.1\r\nHost: a\r\n"+HeaderTarget+": "+o.URL+"\r\n\r\n")
	<-started
	e.backend.Close()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- e.srv.Shutdown(ctx)
	}()
	resp, body := readRawResponse(t, bufio.NewReader(cn), "GET")
	if resp.StatusCode != 200 || body != "done" {
		t.Fatalf("in-flight: %d %q", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Errorf("response written while draining lacks Connection: close: %v", resp.Header)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
