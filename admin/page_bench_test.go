package admin_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// benchServer is an admin server over one target of n IPs (a tenth
// quarantined with a reason, every IP with traffic and byte counters).
func benchServer(b *testing.B, n int) http.Handler {
	b.Helper()
	backend := memory.New(nil)
	b.Cleanup(func() { backend.Close() })
	rec := admin.NewRecorder(nil, 0)
	addrs := make([]string, n)
	ups := map[string]proxy.Upstream{}
	bytes := map[netip.Addr]admin.ByteCounts{}
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.%d.%d.%d:3128", i>>16&255, i>>8&255, i&255)
		ups[addrs[i]] = proxy.Upstream{Addr: addrs[i], Provider: "provider-a", Region: "eu-west"}
		bytes[netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})] = admin.ByteCounts{In: uint64(i) << 20, Out: uint64(i) << 10}
	}
	p, err := pool.New(context.Background(), "web", addrs, backend,
		pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: time.Hour, MaxQueueWait: time.Second},
		pool.Options{Logger: slog.New(slog.DiscardHandler), Hooks: pool.Hooks{
			QuarantinedWhy: func(addr string, until time.Time, cause string) { rec.Quarantined("web", addr, until, cause) },
		}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	for i, a := range addrs {
		rec.Attempt(proxy.AttemptEvent{Target: "web", Addr: a, OK: true})
		rec.Request(proxy.RequestEvent{Target: "web", Outcome: "success", Duration: time.Duration(i%50) * time.Millisecond})
		if i%10 == 0 {
			if err := p.Quarantine(pool.WithCause(context.Background(), "status_429"), a, time.Now().Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
		}
	}
	s, err := admin.New(admin.Options{
		Token: token, Targets: func() []*proxy.Target {
			return []*proxy.Target{{Name: "web", Pool: p, Upstreams: ups}}
		}, Backend: backend, Recorder: rec, Version: "bench",
		Bytes:  func() (map[netip.Addr]admin.ByteCounts, error) { return bytes, nil },
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	return s.Handler()
}

// BenchmarkStatusPage renders the status page (the default page of
// admin.DefaultPageIPs IPs, and all IPs at once) and /api/status as the
// page's script asks for it, for 20 and 2,000 IPs; bytes/op is the size
// of the answer.
func BenchmarkStatusPage(b *testing.B) {
	for _, n := range []int{20, 2000} {
		h := benchServer(b, n)
		for _, c := range []struct{ name, path string }{
			{"page", "/"},
			{"page-all", "/?limit=2000"},
			{"api", fmt.Sprintf("/api/status?limit=%d", admin.DefaultPageIPs)},
			{"api-all", "/api/status"},
		} {
			b.Run(fmt.Sprintf("ips=%d/%s", n, c.name), func(b *testing.B) {
				size := 0
				for b.Loop() {
					req := httptest.NewRequest("GET", c.path, nil)
					req.Header.Set("Authorization", "Bearer "+token)
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					if w.Code != 200 {
						b.Fatalf("%s: %d", c.path, w.Code)
					}
					size = w.Body.Len()
				}
				b.ReportMetric(float64(size), "bytes/page")
			})
		}
	}
}
