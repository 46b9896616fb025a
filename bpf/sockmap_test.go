//go:build linux

package bpf

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// loopbackPair makes a connected TCP pair on 127.0.0.1 (no MPTCP: such
// sockets cannot join a SOCKHASH) and, when fast, puts it on the fast path
// as sockops would: the client's end into ph_sockhash, the server's (the
// agent's) into ph_agent_socks, with its queue entry.
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
	// sockops records where the server's end starts reading (the client's
	// snd_nxt); from here that is unknown, so the entry starts on TCP and
	// one byte over TCP, read by the server, sets it.
	sk := tupleOf(server)
	if err := o.PhQueued.Put(&sk, &recvmsgPhQueue{Tcp: 1}); err != nil {
		tb.Fatalf("put ph_queued entry: %v", err)
	}
	join(tb, o.PhSockhash, client)
	join(tb, o.PhAgentSocks, server)
	if _, err := client.Write([]byte{0}); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		tb.Fatal(err)
	}
	return client, server
}

// fastPathOn attaches the fast path and names its recv counter in the
// config, as the agent does (limit 0: the default queue limit).
func fastPathOn(tb testing.TB, o *Objects, limit uint32) {
	tb.Helper()
	sk, err := o.AttachSkMsg()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sk.Close() })
	if err := o.Configure(Config{ListenPort: 1, Sockmap: true, QueueLimit: limit}); err != nil {
		tb.Fatal(err)
	}
}

// join puts conn into the SOCKHASH m under its own tuple.
func join(tb testing.TB, m *ebpf.Map, conn *net.TCPConn) {
	tb.Helper()
	k := tupleOf(conn)
	rc, err := conn.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var perr error
	_ = rc.Control(func(fd uintptr) { perr = m.Put(&k, uint64(fd)) })
	if perr != nil {
		tb.Fatalf("put socket into a SOCKHASH: %v", perr)
	}
}

// queueOf is the queue entry of the server's end of a pair.
func queueOf(t *testing.T, o *Objects, server *net.TCPConn) recvmsgPhQueue {
	t.Helper()
	var q recvmsgPhQueue
	k := tupleOf(server)
	if err := o.PhQueued.Lookup(&k, &q); err != nil {
		t.Fatal(err)
	}
	return q
}

// plainCopy reads with read(2) only: splice would skip redirected data.
func plainCopy(dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 64<<10))
}

func TestSockmapByteExact(t *testing.T) {
	o := loadForTest(t)
	fastPathOn(t, o, 0)
	for _, fast := range []bool{false, true} {
		c, s := loopbackPair(t, o, fast)
		if n, _ := MapEntries(o.PhSockhash); fast && n != 1 {
			t.Fatalf("ph_sockhash entries = %d, want 1", n)
		}
		if n, _ := MapEntries(o.PhAgentSocks); fast && n != 1 {
			t.Fatalf("ph_agent_socks entries = %d, want 1", n)
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
		if fast {
			if q := queueOf(t, o, s); q.In == 0 || q.Out != q.In {
				t.Fatalf("queue entry %+v: want bytes redirected, and every one read", q)
			}
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
	for _, m := range []*ebpf.Map{o.PhSockhash, o.PhAgentSocks} {
		if n, _ := MapEntries(m); n != 0 {
			t.Fatalf("SOCKHASH entries after close = %d, want 0", n)
		}
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
				fastPathOn(b, o, 0)
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

func tupleOf(c *net.TCPConn) connect4PhTuple {
	la, ra := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return connect4PhTuple{LocalIp: la.Addr().As16(), RemoteIp: ra.Addr().As16(), LocalPort: uint32(la.Port()), RemotePort: uint32(ra.Port())}
}

// TestSockmapQueueBound: the kernel queues whatever the sk_msg program
// redirects, with no limit, so an agent that stops reading would let the
// client's writes pile up in kernel memory. Past the queue limit the
// client's data takes TCP, whose flow control stops the writer, until the
// agent has read every byte the client gave TCP; then the fast path again.
// No byte is lost or reordered across either switch, whatever the write
// size: large non-blocking writes are cut short by a full send buffer, and
// the kernel then sends the next ones over TCP without running the program.
func TestSockmapQueueBound(t *testing.T) {
	o := loadForTest(t)
	const limit = 1 << 20
	fastPathOn(t, o, limit)
	for i, wsize := range []int{64 << 10, 1 << 20, 4 << 20} {
		t.Run(fmt.Sprintf("writes of %d KiB", wsize>>10), func(t *testing.T) {
			c, s := loopbackPair(t, o, true)
			const size = 256 << 20
			var written atomic.Int64
			want := sha256.New()
			wdone := make(chan error, 1)
			go func() {
				src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(i)}), size), want)
				wdone <- testenv.WriteCounted(c, src, wsize, &written)
			}()
			// The agent stalls: without the bound the writer gets through
			// all 256 MiB in well under a second here; with it, the limit
			// plus TCP's buffers (a few MiB) and one write.
			testenv.Eventually(t, 5*time.Second, func() error {
				if q := queueOf(t, o, s); q.Tcp != 1 {
					return fmt.Errorf("entry %+v: want TCP once the agent stalls", q)
				}
				return nil
			})
			time.Sleep(500 * time.Millisecond)
			stalled := written.Load()
			if q := queueOf(t, o, s); q.Tcp != 1 || stalled > 32<<20 {
				t.Fatalf("%.1f MiB written while the agent stalled, entry %+v: want TCP and a few MiB", float64(stalled)/(1<<20), q)
			}
			// Then it reads in small pieces, pausing now and then, so the
			// path switches back and forth.
			got := sha256.New()
			buf := make([]byte, 32<<10)
			var read int64
			for read < size {
				n, err := s.Read(buf)
				got.Write(buf[:n])
				read += int64(n)
				if err != nil {
					t.Fatalf("read at %d: %v", read, err)
				}
				if read%(8<<20) < int64(n) {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if err := <-wdone; err != nil {
				t.Fatalf("write: %v", err)
			}
			if string(got.Sum(nil)) != string(want.Sum(nil)) {
				t.Fatal("payload hashes differ")
			}
			// Every byte read: the next write takes the fast path.
			if _, err := c.Write([]byte("again")); err != nil {
				t.Fatal(err)
			}
			five := make([]byte, 5)
			if _, err := io.ReadFull(s, five); err != nil || string(five) != "again" {
				t.Fatalf("after the switch back: %q, %v", five, err)
			}
			if q := queueOf(t, o, s); q.Tcp != 0 || q.In != q.Out {
				t.Fatalf("entry %+v after the agent caught up: want the fast path back", q)
			}
			t.Logf("%.1f MiB written while the agent stalled", float64(stalled)/(1<<20))
		})
	}
}

// TestSockmapClientSplice: the fast path never redirects into a client's
// socket, so a client that reads with splice(2) (Go's io.Copy into a file
// does), which sees only the TCP receive queue, gets every byte.
func TestSockmapClientSplice(t *testing.T) {
	o := loadForTest(t)
	fastPathOn(t, o, 0)
	c, s := loopbackPair(t, o, true)
	const size = 16 << 20
	want := sha256.New()
	go func() {
		_, _ = plainCopy(s, io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{3}), size), want))
		s.CloseWrite()
	}()
	f, err := os.CreateTemp(t.TempDir(), "splice")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := io.Copy(f, c); err != nil || n != size { // *os.File.ReadFrom: splice
		t.Fatalf("copied %d bytes, %v; want %d", n, err, size)
	}
	got := sha256.New()
	f.Seek(0, io.SeekStart)
	io.Copy(got, f)
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("payload hashes differ")
	}
}

// TestSockmapEarlySend: sockops makes the agent end's queue entry when the
// client's end is established, before the agent's end has joined. What the
// client sends until then goes over TCP, and the redirect starts only once
// the agent has read those bytes: later bytes never overtake them.
func TestSockmapEarlySend(t *testing.T) {
	o := loadForTest(t)
	fastPathOn(t, o, 0)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) { earlySend(t, o, addr) })
	}
}

func earlySend(t *testing.T, o *Objects, addr string) {
	c, s := loopbackPairOn(t, o, false, addr)
	sk2 := tupleOf(s)
	// The client's end is established: its entry for the agent's end (the
	// start of the stream unknown here: 0) and the client into ph_sockhash.
	if err := o.PhQueued.Put(&sk2, &recvmsgPhQueue{}); err != nil {
		t.Fatal(err)
	}
	join(t, o.PhSockhash, c)
	const chunk = 1 << 20
	want := sha256.New()
	src := io.TeeReader(rand.NewChaCha8([32]byte{9}), want)
	send := func() {
		if _, err := io.CopyN(c, src, chunk); err != nil {
			t.Fatal(err)
		}
	}
	send() // the agent's end has not joined: TCP
	if q := queueOf(t, o, s); q.Tcp != 1 || q.In != 0 {
		t.Fatalf("after the early send: %+v, want TCP", q)
	}
	join(t, o.PhAgentSocks, s) // PASSIVE_ESTABLISHED, late
	send()                     // bytes unread on the TCP path: TCP again
	if q := queueOf(t, o, s); q.Tcp != 1 || q.In != 0 {
		t.Fatalf("after the second send: %+v, want TCP", q)
	}
	got := sha256.New()
	if _, err := io.CopyN(struct{ io.Writer }{got}, struct{ io.Reader }{s}, 2*chunk); err != nil {
		t.Fatal(err)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("the agent read the bytes out of order")
	}
	send() // the agent has read every byte: the fast path
	if q := queueOf(t, o, s); q.Tcp != 0 || q.In != chunk {
		t.Fatalf("after the agent caught up: %+v, want the fast path", q)
	}
	if _, err := io.CopyN(struct{ io.Writer }{got}, struct{ io.Reader }{s}, chunk); err != nil {
		t.Fatal(err)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("payload hashes differ")
	}
}

// TestSockmapTwoCounters: two agents' counters on the same maps (a pinned
// install upgraded with overlap) do not count a read twice: only the one
// ph_config names counts, and once it is gone nothing is redirected.
func TestSockmapTwoCounters(t *testing.T) {
	o1 := loadForTest(t)
	fastPathOn(t, o1, 1<<20)
	shared := map[string]*ebpf.Map{}
	for _, nm := range o1.maps() {
		c, err := (*nm.m).Clone()
		if err != nil {
			t.Fatal(err)
		}
		shared[nm.name] = c
	}
	o2, err := load(shared)
	if err != nil {
		t.Fatal(err)
	}
	defer o2.Close()
	sk2, err := o2.AttachSkMsg()
	if err != nil {
		t.Fatal(err)
	}
	if err := o2.Configure(Config{ListenPort: 1, Sockmap: true, QueueLimit: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	c, s := loopbackPair(t, o1, true)
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, struct{ io.Reader }{s}, 32<<20)
		done <- err
	}()
	buf := make([]byte, 64<<10)
	for range 512 {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if q := queueOf(t, o1, s); q.In == 0 || q.Out != q.In {
		t.Fatalf("entry %+v with two counters: want each read counted once", q)
	}
	// The named counter goes: no counter counts, so nothing is redirected.
	if err := sk2.Close(); err != nil {
		t.Fatal(err)
	}
	in := queueOf(t, o1, s).In
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	if q := queueOf(t, o1, s); q.Tcp != 1 || q.In != in {
		t.Fatalf("entry %+v with no counter named: want TCP", q)
	}
}

// TestSockmapClientSemantics: what TCP refuses or reports stays TCP's: a
// write after shutdown(SHUT_WR) fails, and a socket with SO_ZEROCOPY takes
// TCP (which sends its completion notifications).
func TestSockmapClientSemantics(t *testing.T) {
	o := loadForTest(t)
	fastPathOn(t, o, 0)
	c, s := loopbackPair(t, o, true)
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if q := queueOf(t, o, s); q.Tcp != 0 || q.In != 3 {
		t.Fatalf("entry %+v: want the fast path", q)
	}
	c.CloseWrite()
	if _, err := c.Write([]byte("AFTER")); err == nil {
		t.Fatal("a write after shutdown(SHUT_WR) succeeded")
	}
	got, err := io.ReadAll(struct{ io.Reader }{s})
	if err != nil || string(got) != "abc" {
		t.Fatalf("the agent read %q, %v; want \"abc\" then EOF", got, err)
	}

	c, s = loopbackPair(t, o, true)
	rc, _ := c.SyscallConn()
	var serr error
	_ = rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	if _, err := c.Write([]byte("zc")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if q := queueOf(t, o, s); q.Tcp != 1 || q.In != 0 {
		t.Fatalf("entry %+v for a SO_ZEROCOPY socket: want TCP", q)
	}
}
