// Command splicexp is an experiment, not part of the agent: it measures
// what an in-kernel splice of a transparent tunnel's two sockets would save
// against the agent's user-space relay, and whether that splice keeps
// backpressure. Root only; everything is on 127.0.0.1 and every program is
// attached to maps this process creates (nothing on a cgroup or an
// interface), so nothing outlives it.
//
//	go run ./scripts/splicexp [-conns 32 -duration 5s -rounds 3]
//
// Layout, as transparent mode had it before its fast path went one way and
// got a queue bound: client ⇄ relay over loopback with the sk_msg fast path
// both ways (both ends in a SOCKHASH, data redirected into the peer's
// receive queue, no bound), relay ⇄ server over plain loopback TCP. The client sends
// 100 bytes and waits for the server's 100-byte answer, over and over.
//
//   - relay:  the relay copies both ways with plain reads and writes (the
//     agent's relay loop: two goroutines per connection).
//   - splice: the client's sk_msg verdict sends its data straight out of
//     the relay's upstream socket (egress redirect), and an sk_skb
//     stream_verdict on the upstream socket puts the server's data straight
//     into the client's receive queue (ingress redirect). The relay only
//     sets it up.
//
// CPU is the whole machine's busy time from /proc/stat (the splice's
// backlog work runs in kworkers, outside this process), so run it on an
// otherwise idle machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/proxy-hopper/proxy-hopper/internal/benchutil"
)

var (
	conns    = flag.Int("conns", 32, "client connections")
	duration = flag.Duration("duration", 5*time.Second, "length of one run")
	rounds   = flag.Int("rounds", 3, "alternating rounds of relay and splice")
	msgSize  = flag.Int("size", 100, "request and response size, bytes")
)

type xp struct {
	local, up, up2cli *ebpf.Map
	coll              *ebpf.Collection
	links             []func()
}

func main() {
	flag.Parse()
	if err := benchutil.Isolate(); err != nil {
		fmt.Fprintln(os.Stderr, "splicexp:", err)
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "splicexp:", err)
		os.Exit(1)
	}
}

func run() error {
	x, err := load()
	if err != nil {
		return err
	}
	defer x.close()
	fmt.Printf("splicexp: %d connections, %d-byte request/response, %s per run, %d rounds; %d CPUs\n\n", *conns, *msgSize, *duration, *rounds, runtime.NumCPU())
	var rel, spl []result
	for i := 0; i < *rounds; i++ {
		for _, splice := range []bool{false, true} {
			r, err := x.pingPong(splice)
			if err != nil {
				return err
			}
			if splice {
				spl = append(spl, r)
			} else {
				rel = append(rel, r)
			}
			fmt.Fprintf(os.Stderr, "round %d splice=%v: %.0f round trips/s, %.1f µs busy CPU per round trip\n", i+1, splice, r.rps, r.cpuPer)
		}
	}
	mr, ms := median(rel), median(spl)
	fmt.Println("| mode | round trips/s | busy CPU per round trip (whole machine) |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| user-space relay (the agent's loop) | %.0f | %.1fµs |\n", mr.rps, mr.cpuPer)
	fmt.Printf("| in-kernel splice | %.0f (%.2f×) | %.1fµs (%.1fµs less) |\n\n", ms.rps, ms.rps/mr.rps, ms.cpuPer, mr.cpuPer-ms.cpuPer)

	fmt.Println("Backpressure through the splice:")
	if err := x.uploadStall(); err != nil {
		return err
	}
	return x.downloadFlood()
}

type result struct{ rps, cpuPer float64 }

func median(rs []result) result {
	a := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return result{a(func(r result) float64 { return r.rps }), a(func(r result) float64 { return r.cpuPer })}
}

func load() (*xp, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root")
	}
	dir, err := os.MkdirTemp("", "splicexp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	_, self, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(self), "splice.c")
	inc := filepath.Join(filepath.Dir(self), "..", "..", "bpf", "include")
	obj := filepath.Join(dir, "splice.o")
	if out, err := exec.Command("clang-19", "-O2", "-g", "-target", "bpf", "-I"+inc, "-c", src, "-o", obj).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("clang-19: %v\n%s", err, out)
	}
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, err
	}
	x := &xp{local: coll.Maps["local"], up: coll.Maps["up"], up2cli: coll.Maps["up2cli"], coll: coll}
	attach := func(m *ebpf.Map, p *ebpf.Program, t ebpf.AttachType) error {
		if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.FD(), Program: p, Attach: t}); err != nil {
			return err
		}
		x.links = append(x.links, func() {
			_ = link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: p, Attach: t})
		})
		return nil
	}
	if err := attach(x.local, coll.Programs["xp_sk_msg"], ebpf.AttachSkMsgVerdict); err != nil {
		x.close()
		return nil, fmt.Errorf("attach sk_msg: %w", err)
	}
	if err := attach(x.up, coll.Programs["xp_sk_skb"], ebpf.AttachSkSKBStreamVerdict); err != nil {
		x.close()
		return nil, fmt.Errorf("attach sk_skb stream_verdict: %w", err)
	}
	return x, nil
}

func (x *xp) close() {
	for i := len(x.links) - 1; i >= 0; i-- {
		x.links[i]()
	}
	x.coll.Close()
}

func port(c net.Conn, remote bool) uint32 {
	a := c.LocalAddr()
	if remote {
		a = c.RemoteAddr()
	}
	return uint32(a.(*net.TCPAddr).Port)
}

// key is a socket's {local port, remote port}.
type key struct{ Local, Remote uint32 }

func keyOf(c net.Conn) key { return key{port(c, false), port(c, true)} }

func put(m *ebpf.Map, key any, c net.Conn) error {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	if err := rc.Control(func(fd uintptr) { perr = m.Put(key, uint64(fd)) }); err != nil {
		return err
	}
	return perr
}

func listen() (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
}

func dial(addr string) (net.Conn, error) {
	d := net.Dialer{}
	d.SetMultipathTCP(false)
	return d.Dial("tcp", addr)
}

// pair is one client connection through the relay to the server.
type pair struct {
	client, accepted, upstream, server net.Conn
}

func (p *pair) close() {
	for _, c := range []net.Conn{p.client, p.accepted, p.upstream, p.server} {
		if c != nil {
			c.Close()
		}
	}
}

// connect builds a client → relay → server path. With splice the relay's
// upstream socket is spliced to the client before the client may send.
func (x *xp) connect(relayLn, serverLn net.Listener, splice bool) (*pair, error) {
	p := &pair{}
	var err error
	if p.client, err = dial(relayLn.Addr().String()); err != nil {
		return nil, err
	}
	if p.accepted, err = relayLn.Accept(); err != nil {
		return nil, err
	}
	if err := put(x.local, keyOf(p.client), p.client); err != nil {
		return nil, fmt.Errorf("client into sockhash: %w", err)
	}
	if err := put(x.local, keyOf(p.accepted), p.accepted); err != nil {
		return nil, fmt.Errorf("accepted into sockhash: %w", err)
	}
	if p.upstream, err = dial(serverLn.Addr().String()); err != nil {
		return nil, err
	}
	if p.server, err = serverLn.Accept(); err != nil {
		return nil, err
	}
	cport := port(p.client, false)
	if splice {
		if err := x.up2cli.Put(port(p.upstream, false), keyOf(p.client)); err != nil {
			return nil, err
		}
		if err := put(x.up, cport, p.upstream); err != nil {
			return nil, fmt.Errorf("upstream into splice map: %w", err)
		}
	}
	// The go-ahead byte: the client sends only once the path is set up.
	if _, err := p.accepted.Write([]byte{1}); err != nil {
		return nil, err
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(p.client, one); err != nil {
		return nil, err
	}
	return p, nil
}

func (x *xp) unsplice(p *pair) {
	_ = x.up2cli.Delete(port(p.upstream, false))
	_ = x.up.Delete(port(p.client, false))
}

func relayLoop(p *pair) {
	go benchutil.CopyPlain(p.upstream, p.accepted)
	go benchutil.CopyPlain(p.accepted, p.upstream)
}

func busyTicks() (busy uint64) {
	b, _ := os.ReadFile("/proc/stat")
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)[1:]
	for i, v := range f {
		n, _ := strconv.ParseUint(v, 10, 64)
		// user nice system idle iowait irq softirq steal guest guest_nice
		if i == 3 || i == 4 || i == 7 || i >= 8 {
			continue
		}
		busy += n
	}
	return busy
}

const ticksPerSecond = 100 // USER_HZ

func (x *xp) pingPong(splice bool) (result, error) {
	relayLn, err := listen()
	if err != nil {
		return result{}, err
	}
	defer relayLn.Close()
	serverLn, err := listen()
	if err != nil {
		return result{}, err
	}
	defer serverLn.Close()
	var pairs []*pair
	defer func() {
		for _, p := range pairs {
			x.unsplice(p)
			p.close()
		}
	}()
	for i := 0; i < *conns; i++ {
		p, err := x.connect(relayLn, serverLn, splice)
		if err != nil {
			return result{}, err
		}
		pairs = append(pairs, p)
		if !splice {
			relayLoop(p)
		}
		go benchutil.CopyPlain(p.server, p.server) // server: echo
	}
	var total atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	t0 := busyTicks()
	start := time.Now()
	for _, p := range pairs {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			req := make([]byte, *msgSize)
			resp := make([]byte, *msgSize)
			for !stop.Load() {
				if _, err := c.Write(req); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				total.Add(1)
			}
		}(p.client)
	}
	time.Sleep(*duration)
	stop.Store(true)
	wg.Wait()
	el := time.Since(start)
	t1 := busyTicks()
	if firstErr != nil {
		return result{}, firstErr
	}
	n := float64(total.Load())
	cpu := float64(t1-t0) / ticksPerSecond * 1e6 // µs
	return result{rps: n / el.Seconds(), cpuPer: cpu / n}, nil
}

// uploadStall: the server stops reading; a Go client (non-blocking socket,
// edge-triggered epoll) writes 64 MiB through the splice; then the server
// reads everything. A working backpressure path lets the client finish.
func (x *xp) uploadStall() error {
	relayLn, _ := listen()
	defer relayLn.Close()
	serverLn, _ := listen()
	defer serverLn.Close()
	p, err := x.connect(relayLn, serverLn, true)
	if err != nil {
		return err
	}
	defer func() { x.unsplice(p); p.close() }()
	const total = 64 << 20
	var written atomic.Int64
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for written.Load() < total {
			n, err := p.client.Write(buf)
			written.Add(int64(n))
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	time.Sleep(2 * time.Second)
	stalled := written.Load()
	var got atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := p.server.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	select {
	case err := <-done:
		fmt.Printf("- upload, server not reading: the client had written %.1f MiB after 2 s; once the server read, it finished (err=%v)\n", float64(stalled)/(1<<20), err)
	case <-time.After(10 * time.Second):
		fmt.Printf("- upload, server not reading: the client had written %.1f MiB after 2 s; 10 s after the server started reading it had read %.1f MiB and the client's write was still blocked at %.1f of 64 MiB: **the writer is never woken** (its own socket's send buffer never fills, so no write-space event comes)\n",
			float64(stalled)/(1<<20), float64(got.Load())/(1<<20), float64(written.Load())/(1<<20))
	}
	return nil
}

// downloadFlood: the client stops reading; the server writes for 3 s.
// Plain TCP would stop the server after a few MiB (the receive windows and
// buffers of the path); the splice takes the server's data off the upstream
// socket as it arrives.
func (x *xp) downloadFlood() error {
	relayLn, _ := listen()
	defer relayLn.Close()
	serverLn, _ := listen()
	defer serverLn.Close()
	for _, splice := range []bool{false, true} {
		p, err := x.connect(relayLn, serverLn, splice)
		if err != nil {
			return err
		}
		if !splice {
			relayLoop(p)
		}
		var sent atomic.Int64
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := p.server.Write(buf)
				sent.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		time.Sleep(3 * time.Second)
		mode := "user-space relay"
		if splice {
			mode = "splice"
		}
		fmt.Printf("- download, client not reading, %s: the server wrote %.1f MiB in 3 s\n", mode, float64(sent.Load())/(1<<20))
		x.unsplice(p)
		p.close()
	}
	return nil
}
