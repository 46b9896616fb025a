package prober_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/prober"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// origin is the probe URLs' server: it counts the requests per path and
// can hold them until released.
type origin struct {
	*httptest.Server
	mu      sync.Mutex
	hits    map[string]int
	order   []string
	status  int           // answer status (default 200)
	entered chan struct{} // with hold: one value per request that arrived
	hold    chan struct{} // when set, requests wait until it is closed
}

func newOrigin(t *testing.T) *origin {
	o := &origin{hits: map[string]int{}, status: http.StatusOK}
	o.Server = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.Close)
	return o
}

func newTLSOrigin(t *testing.T) *origin {
	o := &origin{hits: map[string]int{}, status: http.StatusOK}
	o.Server = httptest.NewTLSServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.Close)
	return o
}

func (o *origin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.hits[r.URL.Path]++
	o.order = append(o.order, r.URL.Path)
	hold, entered, status := o.hold, o.entered, o.status
	o.mu.Unlock()
	if hold != nil {
		entered <- struct{}{}
		<-hold
	}
	w.WriteHeader(status)
	io.WriteString(w, "probe answer")
}

// holdRequests makes requests wait until the returned func is called.
func (o *origin) holdRequests() (entered <-chan struct{}, release func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.hold, o.entered = make(chan struct{}), make(chan struct{}, 16)
	h := o.hold
	var once sync.Once
	return o.entered, func() { once.Do(func() { close(h) }) }
}

func (o *origin) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.order)
}

func (o *origin) paths() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.order...)
}

// Hand-made broken upstream proxies on loopback.

// refusing returns an address where nothing listens.
func refusing(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t, "127.0.0.1")))
}

// serveUpstream listens on loopback and runs handle for each connection.
func serveUpstream(t *testing.T, handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handle(c) })
		}
	})
	return ln.Addr().String()
}

// hanging accepts and never answers.
func hanging(t *testing.T) string {
	return serveUpstream(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// closing accepts and closes at once.
func closing(t *testing.T) string {
	return serveUpstream(t, func(c net.Conn) { c.Close() })
}

// closingAfterHead reads a request head and closes without answering.
func closingAfterHead(t *testing.T) string { return answering(t, "") }

// badGateway answers every request head with 502, as a proxy whose own
// upstream failed.
func badGateway(t *testing.T) string {
	return answering(t, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

// bigHead is a fake upstream proxy that answers every request 200 with a
// complete but oversized head: 100 KiB, over the prober's 64 KiB bound.
func bigHead(t *testing.T) string {
	return answering(t, "HTTP/1.1 200 OK\r\n"+
		strings.Repeat("X-Filler: "+strings.Repeat("a", 1012)+"\r\n", 100)+
		"Content-Length: 0\r\nConnection: close\r\n\r\n")
}

// answering is a fake upstream proxy that reads a request head and writes
// answer (nothing when empty), then closes.
func answering(t *testing.T, answer string) string {
	return serveUpstream(t, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				io.WriteString(c, answer)
				return
			}
		}
	})
}

// env is pools on the memory backend and a prober, on one fake clock.
type env struct {
	t       *testing.T
	ctx     context.Context
	clock   *pool.FakeClock
	backend *memory.Backend
	targets []prober.Target

	mu     sync.Mutex
	events []string
}

func newEnv(t *testing.T) *env {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, clock: pool.NewFakeClock(t0)}
	e.backend = memory.New(e.clock)
	t.Cleanup(func() { e.backend.Close() })
	return e
}

// target adds a target with upstreams ups (all in its pool).
func (e *env) target(name string, cfg pool.Config, ups ...proxy.Upstream) *pool.Pool {
	e.t.Helper()
	addrs := make([]string, len(ups))
	m := make(map[string]proxy.Upstream, len(ups))
	for i, u := range ups {
		addrs[i] = u.Addr
		m[u.Addr] = u
	}
	p, err := pool.New(e.ctx, name, addrs, e.backend, cfg, pool.Options{
		Clock:  e.clock,
		Logger: slog.New(slog.DiscardHandler),
		Hooks: pool.Hooks{
			QuarantinedWhy: func(addr string, until time.Time, cause string) {
				e.record(name + " quarantined " + addr + " for " + until.Sub(e.clock.Now()).String() + " (" + cause + ")")
			},
			Released: func(addr string) { e.record(name + " released " + addr) },
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(p.Close)
	e.targets = append(e.targets, prober.Target{Name: name, Pool: p, Upstreams: m})
	return p
}

func (e *env) record(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, s)
}

func (e *env) takeEvents() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.events
	e.events = nil
	return ev
}

// prober builds a prober of every target added so far; rounds are run by
// the test (Round), without jitter unless opts sets it.
func (e *env) prober(opts prober.Options) *prober.Prober {
	e.t.Helper()
	if opts.Clock == nil {
		opts.Clock = e.clock
	}
	if opts.Jitter == 0 {
		opts.Jitter = -1
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p, err := prober.New(e.targets, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) state(p *pool.Pool, addr string) pool.IPState {
	e.t.Helper()
	s, err := p.State(e.ctx, addr)
	if err != nil {
		e.t.Fatalf("State(%s): %v", addr, err)
	}
	return s
}

func up(addr string) proxy.Upstream { return proxy.Upstream{Addr: addr} }

// switchable is a fake upstream proxy that answers every request itself
// with the status set last (200 at first).
func switchable(t *testing.T) (addr string, set func(status int)) {
	var mu sync.Mutex
	status := 200
	addr = serveUpstream(t, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				mu.Lock()
				st := status
				mu.Unlock()
				fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", st, http.StatusText(st))
				return
			}
		}
	})
	return addr, func(s int) { mu.Lock(); status = s; mu.Unlock() }
}
