package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// dialFrom opens a TCP connection to addr from the loopback address src.
func dialFrom(src, addr string) (*net.TCPConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// openSilent opens n connections from src that never send a byte; they
// are closed when the test ends.
func openSilent(t *testing.T, src, addr string, n int) []*net.TCPConn {
	t.Helper()
	out, refused := dialMany(t, src, addr, n)
	if refused > 0 {
		t.Fatalf("%d of %d connections from %s reset", refused, n, src)
	}
	return out
}

// dialMany opens n silent connections from src, and counts those the
// agent reset, at once (the reset can end the dial) or soon after.
func dialMany(t *testing.T, src, addr string, n int) (kept []*net.TCPConn, refused int) {
	t.Helper()
	var all []*net.TCPConn
	t.Cleanup(func() {
		for _, c := range all {
			c.Close()
		}
	})
	for range n {
		c, err := dialFrom(src, addr)
		if errors.Is(err, syscall.ECONNRESET) {
			refused++
			continue
		}
		if err != nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		all = append(all, c)
	}
	return all, refused
}

// refusedAll checks that every one of cs is ended by the agent; it
// returns how many were.
func refusedAll(t *testing.T, cs []*net.TCPConn) int {
	t.Helper()
	for i, c := range cs {
		if !resetByAgent(c) {
			t.Fatalf("connection %d over the limit was kept", i)
		}
	}
	return len(cs)
}

// resetByAgent reports whether the agent ended c (a reset or EOF) within
// a few seconds, rather than keeping it open.
func resetByAgent(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var b [1]byte
	_, err := c.Read(b[:])
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

type refusals struct {
	mu sync.Mutex
	by map[string]int
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	r.by[reason]++
	r.mu.Unlock()
}

func (r *refusals) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.by[reason]
}

// TestConnLimitPerClient: one address holding its share of silent
// connections has further ones reset and counted, while a client on
// another address is still served.
func TestConnLimitPerClient(t *testing.T) {
	o := newOrigin(t, false, nil)
	ref := &refusals{by: map[string]int{}}
	e := newEnv(t, envOptions{upstreams: 1, quiet: true, opts: Options{
		MaxConns: 500, MaxConnsPerClient: 40, RefusedConn: ref.add, HeaderTimeout: time.Minute,
	}})
	openSilent(t, "127.0.0.1", e.addr, 40)
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.srv.ActiveConns() != 40 {
			return errors.New("still waiting for 40 connections tracked")
		}
		return nil
	})
	extra, n := dialMany(t, "127.0.0.1", e.addr, 60)
	if n+refusedAll(t, extra) != 60 {
		t.Fatal("not every connection over the per-client limit was refused")
	}
	// Counted right after the reset went out.
	testenv.Eventually(t, 5*time.Second, func() error {
		if ref.get(RefusedClientLimit) != 60 {
			return errors.New("still waiting for 60 refusals counted as " + RefusedClientLimit)
		}
		return nil
	})
	if n := e.srv.ActiveConns(); n != 40 {
		t.Errorf("%d connections open, want 40", n)
	}
	// Another address is served.
	c, err := dialFrom("127.0.0.5", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"+HeaderTarget+": "+o.URL+"\r\n\r\n")
	b, _ := io.ReadAll(c)
	if statusLine(string(b)) != "HTTP/1.1 200 OK" {
		t.Fatalf("request from another address: %q", b)
	}
}

// TestConnLimitGlobal: at MaxConns every further connection is reset and
// counted, whatever its address.
func TestConnLimitGlobal(t *testing.T) {
	ref := &refusals{by: map[string]int{}}
	e := newEnv(t, envOptions{upstreams: 1, quiet: true, opts: Options{
		MaxConns: 30, RefusedConn: ref.add, HeaderTimeout: time.Minute,
	}})
	openSilent(t, "127.0.0.1", e.addr, 20)
	openSilent(t, "127.0.0.6", e.addr, 10)
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.srv.ActiveConns() != 30 {
			return errors.New("still waiting for 30 connections tracked")
		}
		return nil
	})
	for _, src := range []string{"127.0.0.1", "127.0.0.7"} {
		extra, n := dialMany(t, src, e.addr, 5)
		if n+refusedAll(t, extra) != 5 {
			t.Fatalf("not every connection from %s over the global limit was refused", src)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if ref.get(RefusedGlobalLimit) != 10 {
			return errors.New("still waiting for 10 refusals counted as " + RefusedGlobalLimit)
		}
		return nil
	})
}

// TestSilentConnectionHeaderTimeout: a connection that never sends its
// first byte is closed at headerTimeout, not kept for idleTimeout, and its
// slot is free again.
func TestSilentConnectionHeaderTimeout(t *testing.T) {
	e := newEnv(t, envOptions{upstreams: 1, quiet: true, opts: Options{
		HeaderTimeout: 200 * time.Millisecond, IdleTimeout: 10 * time.Minute,
	}})
	cs := openSilent(t, "127.0.0.1", e.addr, 50)
	for i, c := range cs {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("silent connection %d: %v, want it closed by the agent", i, err)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.srv.ActiveConns() != 0 {
			return errors.New("still waiting for no connection tracked")
		}
		return nil
	})
}
