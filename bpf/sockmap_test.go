//go:build linux

package bpf

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// loopbackPair makes a connected TCP pair on 127.0.0.1 (no MPTCP: such
// sockets cannot join a SOCKHASH) and, when fast, puts both ends into the
// SOCKHASH with the sk_msg program attached, as sockops would.
func loopbackPair(tb testing.TB, o *Objects, fast bool) (client, server *net.TCPConn) {
	tb.Helper()
	return loopbackPairOn(tb, o, fast, "127.0.0.1:0")
}

// loopbackPairOn is loopbackPair with the listener on addr.
func loopbackPairOn(tb testing.TB, o *Objects, fast bool, addr string) (client, server *net.TCPConn) {
	tb.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{}
	d.SetMultipathTCP(false)
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	client, server = c.(*net.TCPConn), s.(*net.TCPConn)
	tb.Cleanup(func() { client.Close(); server.Close() })
	if !fast {
		return client, server
	}
	for _, conn := range []*net.TCPConn{client, server} {
		k := tupleOf(conn)
		rc, err := conn.SyscallConn()
		if err != nil {
			tb.Fatal(err)
		}
		// As sockops does: the queue entry first, then the socket.
		if err := o.Queued.Put(&k, &recvmsgPhQueue{}); err != nil {
			tb.Fatalf("put ph_queued entry: %v", err)
		}
		var perr error
		_ = rc.Control(func(fd uintptr) { perr = o.SockHash.Put(&k, uint64(fd)) })
		if perr != nil {
			tb.Fatalf("put socket into ph_sockhash: %v", perr)
		}
	}
	return client, server
}

// plainCopy reads with read(2) only: splice would skip redirected data.
func plainCopy(dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 64<<10))
}

func TestSockmapByteExact(t *testing.T) {
	o := loadForTest(t)
	sk, err := o.AttachSkMsg()
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	for _, fast := range []bool{false, true} {
		c, s := loopbackPair(t, o, fast)
		if n, _ := MapEntries(o.SockHash); fast && n != 2 {
			t.Fatalf("sockhash entries = %d, want 2", n)
		}
		const size = 64 << 20
		want := sha256.New()
		got := sha256.New()
		done := make(chan error, 1)
		go func() {
			_, err := plainCopy(got, s)
			done <- err
		}()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), want)
		if _, err := plainCopy(c, src); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite() // half-close: the server sees EOF after every byte
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if string(got.Sum(nil)) != string(want.Sum(nil)) {
			t.Fatalf("fast=%v: payload hashes differ", fast)
		}
		// The other direction still works after the half-close.
		if _, err := s.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 3)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "bye" {
			t.Fatalf("reply after half-close: %q, %v", buf, err)
		}
		s.SetLinger(0) // abrupt close
		s.Close()
		c.Close()
	}
	if n, _ := MapEntries(o.SockHash); n != 0 {
		t.Fatalf("sockhash entries after close = %d, want 0", n)
	}
}

// BenchmarkLoopbackThroughput measures bulk client→server throughput over
// loopback with and without the sk_msg fast path, for two write sizes; the
// reader uses plain reads of the same size.
func BenchmarkLoopbackThroughput(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20} {
		for _, fast := range []bool{false, true} {
			name := "tcp"
			if fast {
				name = "sockmap"
			}
			b.Run(fmt.Sprintf("%s/%dKiB", name, size>>10), func(b *testing.B) {
				testenv.RequireRoot(b)
				o, err := Load()
				if err != nil {
					b.Fatal(err)
				}
				defer o.Close()
				sk, err := o.AttachSkMsg()
				if err != nil {
					b.Fatal(err)
				}
				defer sk.Close()
				c, s := loopbackPair(b, o, fast)
				done := make(chan struct{})
				go func() {
					_, _ = io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{s}, make([]byte, size))
					close(done)
				}()
				buf := make([]byte, size)
				b.SetBytes(int64(len(buf)))
				b.ResetTimer()
				for range b.N {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.CloseWrite()
				<-done
			})
		}
	}
}

// TestSockmapQueueBound: the kernel queues whatever the sk_msg program
// redirects, with no limit, so a reader that stops would let its peer's
// writes pile up in kernel memory. Past the queue limit that direction
// takes TCP, whose flow control stops the writer, until the reader has
// taken every byte; then the fast path again. No byte is lost or reordered
// across either switch. Both directions, each with its reader stalled for
// a while.
func TestSockmapQueueBound(t *testing.T) {
	o := loadForTest(t)
	const limit = 1 << 20
	if err := o.Configure(Config{ListenPort: 1, Sockmap: true, QueueLimit: limit}); err != nil {
		t.Fatal(err)
	}
	sk, err := o.AttachSkMsg()
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	c, s := loopbackPair(t, o, true)
	for i, dir := range []struct {
		name string
		w, r *net.TCPConn
	}{{"client→server", c, s}, {"server→client", s, c}} {
		const size = 256 << 20
		var written atomic.Int64
		want := sha256.New()
		wdone := make(chan error, 1)
		go func() {
			src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(i)}), size), want)
			buf := make([]byte, 64<<10)
			for {
				n, err := io.ReadFull(src, buf)
				if n > 0 {
					m, werr := dir.w.Write(buf[:n])
					written.Add(int64(m))
					if werr != nil {
						wdone <- werr
						return
					}
				}
				if err != nil {
					wdone <- nil
					return
				}
			}
		}()
		time.Sleep(time.Second)
		stalled := written.Load()
		// Without the bound the writer gets through all 256 MiB in well under
		// a second here; with it, the limit plus TCP's buffers (a few MiB).
		if stalled > 32<<20 {
			t.Fatalf("%s: %d MiB written while the reader stalled (queue limit %d KiB)", dir.name, stalled>>20, limit>>10)
		}
		var q recvmsgPhQueue
		rk := tupleOf(dir.r)
		if err := o.Queued.Lookup(&rk, &q); err != nil {
			t.Fatal(err)
		}
		if q.Tcp != 1 {
			t.Fatalf("%s: reader's queue entry %+v: not switched to TCP", dir.name, q)
		}
		got := sha256.New()
		if _, err := io.CopyN(struct{ io.Writer }{got}, struct{ io.Reader }{dir.r}, size); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if err := <-wdone; err != nil {
			t.Fatalf("%s: write: %v", dir.name, err)
		}
		if string(got.Sum(nil)) != string(want.Sum(nil)) {
			t.Fatalf("%s: payload hashes differ", dir.name)
		}
		// The reader has taken every byte: the next write takes the fast
		// path again.
		if _, err := dir.w.Write([]byte("again")); err != nil {
			t.Fatal(err)
		}
		five := make([]byte, 5)
		if _, err := io.ReadFull(dir.r, five); err != nil || string(five) != "again" {
			t.Fatalf("%s: after the switch back: %q, %v", dir.name, five, err)
		}
		var q2 recvmsgPhQueue
		if err := o.Queued.Lookup(&rk, &q2); err != nil {
			t.Fatal(err)
		}
		if q2.Tcp != 0 || q2.In != q2.Out {
			t.Fatalf("%s: entry %+v after the reader caught up: want the fast path back", dir.name, q2)
		}
		t.Logf("%s: %.1f MiB written while the reader stalled; entry %+v", dir.name, float64(stalled)/(1<<20), q)
	}
}

func tupleOf(c *net.TCPConn) connect4PhTuple {
	la, ra := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return connect4PhTuple{LocalIp: la.Addr().As16(), RemoteIp: ra.Addr().As16(), LocalPort: uint32(la.Port()), RemotePort: uint32(ra.Port())}
}

// TestSockmapEarlySend: the client's side joins the fast path first, and
// sockops makes the agent side's queue entry then too. What the client
// sends before the agent's side has joined goes over TCP, counted, and the
// redirect starts only once the reader has taken those bytes: later bytes
// never overtake them.
func TestSockmapEarlySend(t *testing.T) {
	o := loadForTest(t)
	if err := o.Configure(Config{ListenPort: 1, Sockmap: true}); err != nil {
		t.Fatal(err)
	}
	sk, err := o.AttachSkMsg()
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) { earlySend(t, o, addr) })
	}
}

func earlySend(t *testing.T, o *Objects, addr string) {
	c, s := loopbackPairOn(t, o, false, addr)
	ck, sk2 := tupleOf(c), tupleOf(s)
	join := func(conn *net.TCPConn, k connect4PhTuple) {
		rc, err := conn.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var perr error
		_ = rc.Control(func(fd uintptr) { perr = o.SockHash.Put(&k, uint64(fd)) })
		if perr != nil {
			t.Fatal(perr)
		}
	}
	// As sockops does on the client's ACTIVE_ESTABLISHED: both entries, the
	// client into the SOCKHASH; the server side joins later.
	for _, k := range []connect4PhTuple{ck, sk2} {
		if err := o.Queued.Put(&k, &recvmsgPhQueue{}); err != nil {
			t.Fatal(err)
		}
	}
	join(c, ck)
	const chunk = 1 << 20
	want := sha256.New()
	src := io.TeeReader(rand.NewChaCha8([32]byte{9}), want)
	send := func() {
		if _, err := io.CopyN(c, src, chunk); err != nil {
			t.Fatal(err)
		}
	}
	entry := func() recvmsgPhQueue {
		var q recvmsgPhQueue
		if err := o.Queued.Lookup(&sk2, &q); err != nil {
			t.Fatal(err)
		}
		return q
	}
	send() // the server side is not in the SOCKHASH yet: TCP, counted
	if q := entry(); q.Tcp != 1 || q.In != chunk {
		t.Fatalf("after the early send: %+v, want TCP and %d bytes counted", q, chunk)
	}
	join(s, sk2) // PASSIVE_ESTABLISHED, late; the entry exists already
	send()       // unread bytes on the TCP path: TCP again
	if q := entry(); q.Tcp != 1 || q.In != 2*chunk {
		t.Fatalf("after the second send: %+v, want TCP and %d bytes counted", q, 2*chunk)
	}
	got := sha256.New()
	if _, err := io.CopyN(struct{ io.Writer }{got}, struct{ io.Reader }{s}, 2*chunk); err != nil {
		t.Fatal(err)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("the server read the bytes out of order")
	}
	send() // the reader has caught up: the fast path
	if q := entry(); q.Tcp != 0 {
		t.Fatalf("after the reader caught up: %+v, want the fast path", q)
	}
	if _, err := io.CopyN(struct{ io.Writer }{got}, struct{ io.Reader }{s}, chunk); err != nil {
		t.Fatal(err)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("payload hashes differ")
	}
}
