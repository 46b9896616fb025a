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

// BenchmarkHeaderMode measures one header-mode request through the agent,
// a miniproxy upstream and a local origin, over keep-alive connections
// (everything in this process; see scripts/bench for the real comparison).
func BenchmarkHeaderMode(b *testing.B) {
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("0123456789012345678901234567890123456789"))
	})}
	ol, _ := net.Listen("tcp", "127.0.0.1:0")
	go origin.Serve(ol)
	defer origin.Close()
	var addrs []string
	ups := map[string]Upstream{}
	for i := 0; i < 16; i++ {
		p, err := miniproxy.Start(miniproxy.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		addrs = append(addrs, p.Addr())
		ups[p.Addr()] = Upstream{Addr: p.Addr()}
	}
	be := memory.New(nil)
	pl, err := pool.New(context.Background(), "b", addrs, be, pool.Config{MaxQueueWait: 10 * time.Second, FailuresUntilQuarantine: 5}, pool.Options{})
	if err != nil {
		b.Fatal(err)
	}
	srv := New([]*Target{{Name: "b", Regex: regexp.MustCompile(".*"), Pool: pl, Upstreams: ups}},
		Options{Logger: slog.New(slog.DiscardHandler)})
	l, _ := Listen(context.Background(), "127.0.0.1:0")
	go srv.Serve(l)
	defer func() {
		be.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	req := fmt.Sprintf("GET /bench HTTP/1.1\r\nHost: agent\r\nX-Proxy-Hopper-Target: http://%s\r\n\r\n", ol.Addr())
	b.SetParallelism(8)
	cpuStart, ok := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for pb.Next() {
			if _, err := io.WriteString(c, req); err != nil {
				b.Error(err)
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	// CPU time of the whole process (client, agent, upstreams, origin) per
	// request: steadier than wall time when other processes load the machine.
	if end, ok2 := cpuTime(); ok && ok2 {
		b.ReportMetric(float64(end-cpuStart)/float64(b.N), "cpu-ns/op")
	}
}
