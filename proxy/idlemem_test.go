package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// idleConns is how many idle connections the memory tests open.
const idleConns = 100

// maxIdleHeap is the live heap an idle connection may cost, everything in
// this process counted (agent side, the client's socket, the stand-in
// upstream's): a connection or tunnel holding its buffers costs 32 KiB
// (client reader and writer) to 100 KiB (and the tunnel's copy buffers).
const maxIdleHeap = 12 << 10

// stubUpstreams listens on n addresses 127.0.0.x and answers CONNECT with
// 200 then holds the tunnel, and other requests with a small 200, reading
// byte by byte into a fixed array: it allocates next to nothing per
// connection, so the heap the test sees is the agent's.
func stubUpstreams(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	var lns []net.Listener
	t.Cleanup(func() {
		for _, l := range lns {
			l.Close()
		}
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	for i := range n {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.%d.%d:0", 20+i/250, 1+i%250))
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, l)
		addrs = append(addrs, l.Addr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					var head [4096]byte
					for {
						n := 0
						for n < 4 || string(head[n-4:n]) != "\r\n\r\n" {
							if n == len(head) {
								return
							}
							if _, err := c.Read(head[n : n+1]); err != nil {
								return
							}
							n++
						}
						if strings.HasPrefix(string(head[:8]), "CONNECT ") {
							io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
						} else {
							io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						}
					}
				}()
			}
		}()
	}
	return addrs
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestIdleConnectionsHoldNoBuffers: idle CONNECT tunnels, idle keep-alive
// connections (after a request through an upstream) and connections that
// never sent a byte hold no read, write or copy buffer: their live heap
// is a few KiB each, and a tunnel costs two goroutines.
func TestIdleConnectionsHoldNoBuffers(t *testing.T) {
	for _, kind := range []string{"tunnel", "keepalive", "silent"} {
		t.Run(kind, func(t *testing.T) {
			ups := stubUpstreams(t, idleConns)
			e := newEnv(t, envOptions{extraAddrs: ups, quiet: true, opts: Options{
				HeaderTimeout: time.Minute, IdleTimeout: time.Minute, TunnelIdleTimeout: time.Minute,
			}})
			// Warm the pools and the agent's first-use allocations.
			if c := openIdle(t, e.addr, kind); c != nil {
				c.Close()
			}
			testenv.Eventually(t, 5*time.Second, func() error {
				if e.srv.ActiveConns() != 0 {
					return errors.New("still waiting for the warm-up connection to end")
				}
				return nil
			})
			g0, h0 := runtime.NumGoroutine(), liveHeap()
			var cs []net.Conn
			t.Cleanup(func() {
				for _, c := range cs {
					c.Close()
				}
			})
			for range idleConns {
				cs = append(cs, openIdle(t, e.addr, kind))
			}
			testenv.Eventually(t, 5*time.Second, func() error {
				if e.srv.ActiveConns() != idleConns {
					return errors.New("still waiting for every connection tracked")
				}
				return nil
			})
			// Keep-alive connections give their buffers back after
			// keepAliveGrace: wait for it (bounded), then measure.
			var per uint64
			testenv.Eventually(t, keepAliveGrace+5*time.Second, func() error {
				per = 0
				if h := liveHeap(); h > h0 {
					per = (h - h0) / idleConns
				}
				if per > maxIdleHeap {
					return fmt.Errorf("%s: %d bytes of live heap per idle connection, want at most %d", kind, per, maxIdleHeap)
				}
				return nil
			})
			// Goroutines: the stand-in upstream has one per tunnel, the
			// agent may have two (one per direction).
			want := 1 // the agent's, waiting for a request
			if kind == "tunnel" {
				want = 3
			} else if kind == "keepalive" {
				want = 2 // and the upstream's kept connection
			}
			if g := runtime.NumGoroutine() - g0; g > want*idleConns {
				t.Errorf("%s: %d goroutines for %d idle connections, want at most %d each", kind, g, idleConns, want)
			}
			t.Logf("%s: %d bytes of live heap, %d goroutines per idle connection", kind, per, (runtime.NumGoroutine()-g0)/idleConns)
		})
	}
}

// openIdle opens one connection of kind to the agent and leaves it idle.
func openIdle(t *testing.T, addr, kind string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var want string
	switch kind {
	case "silent":
		return c
	case "tunnel":
		io.WriteString(c, "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
		want = "HTTP/1.1 200 Connection established\r\n\r\n"
	case "keepalive":
		io.WriteString(c, "GET http://127.0.0.1:9/k HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
		want = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(bufio.NewReaderSize(c, 16), got); err != nil || string(got) != want {
		c.Close()
		t.Fatalf("%s: got %q, %v; want %q", kind, got, err, want)
	}
	_ = c.SetDeadline(time.Time{})
	return c
}
