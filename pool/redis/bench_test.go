package redis_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/cputime"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
)

// benchIPs is the pool size of the benchmarks: more IPs than callers, so
// that they measure the round trips, not waiting for IPs.
const benchIPs = 256

func benchAddrs() []string {
	addrs := make([]string, benchIPs)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.9.%d.%d:3128", i/256, i%256)
	}
	return addrs
}

// BenchmarkAcquireRelease is acquire+release through pool.Pool over the
// Redis backend against a local redis-server: Acquire, then Release with
// Success (the failure reset rides on the return: two scripts per pair).
// With agents=2, two pools over two backends share one target, callers
// split between them. ops/s is pairs per second over all agents; callers
// is the number of concurrent requests (an agent under load has many).
//
//	go test -run '^$' -bench AcquireRelease -benchtime 3s ./pool/redis/
func BenchmarkAcquireRelease(b *testing.B) {
	srv := testenv.StartRedis(b, testenv.RedisOptions{})
	for _, bc := range []struct {
		agents, callers int
		noPipeline      bool
	}{
		{1, 1, false}, {1, 64, false}, {2, 64, false},
		{1, 1, true}, {1, 64, true}, {2, 64, true},
	} {
		name := fmt.Sprintf("agents=%d/callers=%d/pipeline=%v", bc.agents, bc.callers, !bc.noPipeline)
		b.Run(name, func(b *testing.B) {
			o := redis.Options{Prefix: newPrefix(), NoAutoPipeline: bc.noPipeline}
			ctx := context.Background()
			cfg := pool.Config{MaxQueueWait: time.Second, FailuresUntilQuarantine: 5, QuarantineTime: time.Minute}
			pools := make([]*pool.Pool, bc.agents)
			for i := range pools {
				p, err := pool.New(ctx, "bench", benchAddrs(), newBackend(b, srv.URL(0), o), cfg, pool.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(p.Close)
				pools[i] = p
			}
			var next atomic.Int64
			b.SetParallelism(max(1, bc.callers/runtime.GOMAXPROCS(0)))
			self0, selfOK := cputime.Self()
			srv0, srvOK := cputime.Proc(srv.Pid())
			if bc.callers == 1 {
				b.ResetTimer()
				for range b.N {
					cycle(b, ctx, pools[0])
				}
			} else {
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					p := pools[int(next.Add(1))%bc.agents]
					for pb.Next() {
						cycle(b, ctx, p)
					}
				})
			}
			rate := float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(rate, "ops/s")
			b.ReportMetric(rate/float64(bc.agents), "ops/s/agent")
			// CPU per pair, which other load on the machine does not
			// change: what one core of agent, and Redis, can do.
			if self1, ok := cputime.Self(); ok && selfOK {
				b.ReportMetric(float64((self1-self0).Microseconds())/float64(b.N), "agent-cpu-µs/op")
			}
			if srv1, ok := cputime.Proc(srv.Pid()); ok && srvOK {
				b.ReportMetric(float64((srv1-srv0).Microseconds())/float64(b.N), "redis-cpu-µs/op")
			}
		})
	}
}

func cycle(b *testing.B, ctx context.Context, p *pool.Pool) {
	ip, err := p.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Release(ctx, ip, pool.Success); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAcquireExcept compares Acquire with AcquireExcept over Redis
// (one agent; benchIPs IPs, no cooldown): acquire+release pairs, as in
// BenchmarkAcquireRelease. tried=1 skips the IP of the caller's previous
// pair; head=k has the first k IPs seeded tried, which stay at the head
// of the queue, so every call skips k IPs (the worst case).
//
//	go test -run '^$' -bench AcquireExcept ./pool/redis/
func BenchmarkAcquireExcept(b *testing.B) {
	srv := testenv.StartRedis(b, testenv.RedisOptions{})
	for _, callers := range []int{1, 64} {
		for _, mode := range []struct {
			name string
			k    int
			head bool
		}{{"acquire", 0, false}, {"tried=1", 1, false}, {fmt.Sprintf("head=%d", pool.MaxExcept), pool.MaxExcept, true}} {
			b.Run(fmt.Sprintf("callers=%d/%s", callers, mode.name), func(b *testing.B) {
				o := redis.Options{Prefix: newPrefix()}
				ctx := context.Background()
				cfg := pool.Config{MaxQueueWait: time.Second, FailuresUntilQuarantine: 5, QuarantineTime: time.Minute}
				p, err := pool.New(ctx, "bench", benchAddrs(), newBackend(b, srv.URL(0), o), cfg, pool.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(p.Close)
				var tried []string
				if mode.head {
					tried = benchAddrs()[:mode.k]
				}
				one := func(prev string) string {
					var ip string
					var err error
					switch {
					case mode.k == 0:
						ip, err = p.Acquire(ctx)
					case mode.head:
						ip, err = p.AcquireExcept(ctx, tried)
					default:
						ip, err = p.AcquireExcept(ctx, []string{prev})
					}
					if err != nil {
						b.Fatal(err)
					}
					if err := p.Release(ctx, ip, pool.Success); err != nil {
						b.Fatal(err)
					}
					return ip
				}
				b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
				self0, selfOK := cputime.Self()
				srv0, srvOK := cputime.Proc(srv.Pid())
				b.ResetTimer()
				if callers == 1 {
					prev := ""
					for range b.N {
						prev = one(prev)
					}
				} else {
					b.RunParallel(func(pb *testing.PB) {
						prev := ""
						for pb.Next() {
							prev = one(prev)
						}
					})
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
				if self1, ok := cputime.Self(); ok && selfOK {
					b.ReportMetric(float64((self1-self0).Microseconds())/float64(b.N), "agent-cpu-µs/op")
				}
				if srv1, ok := cputime.Proc(srv.Pid()); ok && srvOK {
					b.ReportMetric(float64((srv1-srv0).Microseconds())/float64(b.N), "redis-cpu-µs/op")
				}
			})
		}
	}
}
