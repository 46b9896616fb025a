//go:build linux

package bpf

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// loopbackPair makes a connected TCP pair on 127.0.0.1 (no MPTCP: such
// sockets cannot join a SOCKHASH) and, when fast, puts both ends into the
// SOCKHASH with the sk_msg program attached, as sockops would.
func loopbackPair(tb testing.TB, o *Objects, fast bool) (client, server *net.TCPConn) {
	tb.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
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
		la, ra := conn.LocalAddr().(*net.TCPAddr).AddrPort(), conn.RemoteAddr().(*net.TCPAddr).AddrPort()
		k := connect4PhTuple{LocalIp: la.Addr().As16(), RemoteIp: ra.Addr().As16(), LocalPort: uint32(la.Port()), RemotePort: uint32(ra.Port())}
		rc, err := conn.SyscallConn()
		if err != nil {
			tb.Fatal(err)
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
				o, err := Load()
				if err != nil {
					b.Skip(err)
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
