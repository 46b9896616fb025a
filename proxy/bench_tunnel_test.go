package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
)

// benchTunnel opens a CONNECT tunnel through an agent and a miniproxy
// upstream to an echo origin (all in this process) and returns it.
func benchTunnel(b *testing.B) net.Conn {
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ol.Close() })
	go func() {
		for {
			c, err := ol.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	p, err := miniproxy.Start(miniproxy.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	be := memory.New(nil)
	pl, err := pool.New(context.Background(), "b", []string{p.Addr()}, be, pool.Config{MaxQueueWait: 10 * time.Second, FailuresUntilQuarantine: 5}, pool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	srv := New([]*Target{{Name: "b", Regex: regexp.MustCompile(".*"), Pool: pl, Upstreams: map[string]Upstream{p.Addr(): {Addr: p.Addr()}}}},
		Options{Logger: slog.New(slog.DiscardHandler)})
	l, _ := Listen(context.Background(), "127.0.0.1:0")
	go srv.Serve(l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		be.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", ol.Addr())
	resp, err := http.ReadResponse(bufio.NewReaderSize(oneByteReader{c}, 16), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("CONNECT: %v %v", resp, err)
	}
	return c
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) { return o.r.Read(p[:1]) }

// BenchmarkTunnelEcho is a 64-byte round trip through a tunnel: the
// per-read cost of the relay.
func BenchmarkTunnelEcho(b *testing.B) {
	c := benchTunnel(b)
	msg := make([]byte, 64)
	got := make([]byte, 64)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTunnelStream moves 64 KiB per op through a tunnel and back.
func BenchmarkTunnelStream(b *testing.B) {
	c := benchTunnel(b)
	buf := make([]byte, 64<<10)
	done := make(chan error, 1)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	go func() {
		rb := make([]byte, 64<<10)
		for range b.N {
			if _, err := io.ReadFull(c, rb); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
