// Package demo runs proxy-hopper against a world it builds on 127.0.0.1:
// an origin with a few JSON endpoints, upstream proxies that are healthy,
// dead, rate-limiting and slow, and a handful of clients in header mode,
// and shows live how the agent rotates, retries and quarantines.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/agent"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/internal/miniproxy"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// Options configures Run; zero fields take the defaults shown.
type Options struct {
	Duration time.Duration // how long to drive traffic (20s)
	Out      io.Writer     // where the table and summary go (os.Stdout)
	Plain    bool          // print snapshots every 2s instead of redrawing
	Clients  int           // concurrent clients (8)
	// Dir receives the config and the agent log and is kept; by default a
	// temporary directory is used and removed at the end.
	Dir string
}

// The demo's pool policy: short enough that the dead IP is quarantined,
// released and quarantined again within the default 20s.
const (
	targetName         = "demo-api"
	minRequestInterval = 200 * time.Millisecond
	maxQueueWait       = 5 * time.Second
	numRetries         = 3
	failuresToQuar     = 2
	quarantineTime     = 5 * time.Second
	slowDelay          = 150 * time.Millisecond
	rateLimitEvery     = 4

	redrawEvery = 500 * time.Millisecond
	plainEvery  = 2 * time.Second
	pollEvery   = 100 * time.Millisecond // pool snapshots; quarantines last seconds
	drainMax    = 3 * time.Second        // for queued requests at the end
)

// Run builds the demo world, runs the agent in it for opts.Duration while
// drawing the per-IP table, then prints a summary. It returns early, after
// the summary, when ctx ends (Ctrl-C).
func Run(ctx context.Context, opts Options) error {
	_, err := run(ctx, opts)
	return err
}

// result is what a run saw, for tests.
type result struct {
	col         *collector
	interrupted bool
	originHits  int64
	logPath     string
}

func run(ctx context.Context, opts Options) (res *result, err error) {
	if opts.Duration <= 0 {
		opts.Duration = 20 * time.Second
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.Clients <= 0 {
		opts.Clients = 8
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "proxy-hopper-demo-"); err != nil {
			return nil, fmt.Errorf("create demo dir: %w", err)
		}
		defer os.RemoveAll(dir)
	}

	// The world: an origin and the upstream proxies.
	var cleanups []func()
	defer func() {
		for _, f := range slices.Backward(cleanups) {
			f()
		}
	}()
	org, err := startOrigin()
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, org.Close)
	var addrs, roles []string
	for _, up := range []struct {
		role string
		opts miniproxy.Options
	}{
		{roleHealthy, miniproxy.Options{}},
		{roleHealthy, miniproxy.Options{}},
		{roleHealthy, miniproxy.Options{}},
		{roleDead, miniproxy.Options{}},
		{role429, miniproxy.Options{RateLimitEvery: rateLimitEvery}},
		{roleSlow, miniproxy.Options{Delay: slowDelay}},
	} {
		if up.role == roleDead {
			addr, release, err := reserveDeadAddr()
			if err != nil {
				return nil, err
			}
			cleanups = append(cleanups, release)
			addrs, roles = append(addrs, addr), append(roles, up.role)
			continue
		}
		p, err := miniproxy.Start(up.opts)
		if err != nil {
			return nil, fmt.Errorf("start %s upstream: %w", up.role, err)
		}
		cleanups = append(cleanups, func() { _ = p.Close() })
		addrs, roles = append(addrs, p.Addr()), append(roles, up.role)
	}

	// The agent, configured through a real config file.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the agent: %w", err)
	}
	cleanups = append(cleanups, func() { _ = ln.Close() })
	cfgPath := filepath.Join(dir, "proxy-hopper.yaml")
	if err := os.WriteFile(cfgPath, []byte(configYAML(ln.Addr().(*net.TCPAddr).Port, org.URL(), addrs, roles)), 0o600); err != nil {
		return nil, fmt.Errorf("write demo config: %w", err)
	}
	cfg, err := config.Load(cfgPath, nil)
	if err != nil {
		return nil, fmt.Errorf("load demo config %s: %w", cfgPath, err)
	}
	resolved, err := cfg.Resolve()
	if err != nil {
		return nil, fmt.Errorf("build agent: %w", err)
	}
	logPath := filepath.Join(dir, "agent.log")
	log, logCloser, err := agent.NewLogger(slog.LevelInfo, "text", logPath)
	if err != nil {
		return nil, fmt.Errorf("open agent log: %w", err)
	}
	cleanups = append(cleanups, func() { _ = logCloser.Close() })
	start := time.Now()
	col := newCollector(start, addrs, roles)
	backend := memory.New(nil)
	a, err := agent.New(ctx, resolved, agent.Options{Logger: log, Listener: ln, Hooks: col.hooks(), Backend: backend})
	if err != nil { // the agent closed the backend
		return nil, fmt.Errorf("build agent: %w", err)
	}
	if len(a.Targets()) != 1 {
		_ = backend.Close()
		return nil, fmt.Errorf("demo config gave %d targets, want 1", len(a.Targets()))
	}
	pl := a.Targets()[0].Pool
	if opts.Dir == "" {
		logPath = "" // removed with the temp dir
	}
	// From here on an interrupt (ctx) still goes through the agent's Run,
	// which is what releases its pools and backend.

	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentErr := make(chan error, 1)
	go func() { agentErr <- a.Run(agentCtx) }()

	// Traffic, pool polling and drawing until the time is up or ctx ends.
	trafficCtx, stopTraffic := context.WithTimeout(ctx, opts.Duration)
	defer stopTraffic()
	var wg sync.WaitGroup
	d := &driver{
		agentURL:  "http://" + ln.Addr().String(),
		originURL: org.URL(),
		col:       col,
		hc: &http.Client{Transport: &http.Transport{
			Proxy:               nil, // the agent is addressed directly (header mode)
			MaxIdleConnsPerHost: opts.Clients,
			IdleConnTimeout:     30 * time.Second,
		}},
	}
	defer d.hc.CloseIdleConnections()
	for i := range opts.Clients {
		wg.Go(func() { d.loop(trafficCtx, i) })
	}
	wg.Go(func() {
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		for {
			if states, err := pl.Snapshot(trafficCtx); err == nil {
				col.poolState(time.Now(), states, backend.Waiting(targetName))
			}
			select {
			case <-trafficCtx.Done():
				return
			case <-t.C:
			}
		}
	})

	h := header{
		agent: ln.Addr().String(), origin: org.URL(), target: targetName, clients: opts.Clients, duration: opts.Duration,
		policy: fmt.Sprintf("minRequestInterval %s, maxQueueWait %s, numRetries %d, quarantine after %d failures for %s",
			minRequestInterval, maxQueueWait, numRetries, failuresToQuar, quarantineTime),
	}
	live := !opts.Plain && isTerminal(opts.Out)
	if live {
		fmt.Fprint(opts.Out, ansiHideCursor+ansiClear)
		defer fmt.Fprint(opts.Out, ansiShowCursor)
	}
	draw := func(now time.Time) {
		col.mark(now)
		tbl := col.table(now, h)
		if live {
			fmt.Fprint(opts.Out, ansiHome+strings.ReplaceAll(tbl, "\n", ansiClearLine+"\n")+ansiClearBelow)
		} else {
			fmt.Fprint(opts.Out, tbl+"\n")
		}
	}
	tick := time.NewTicker(redrawEvery)
	var runErr error
	lastPlain := start
	col.mark(start)
loop:
	for {
		select {
		case <-trafficCtx.Done():
			break loop
		case err := <-agentErr:
			agentErr <- err // read again below
			runErr = err
			break loop
		case now := <-tick.C:
			if live {
				draw(now)
			} else if now.Sub(lastPlain) >= plainEvery-redrawEvery/2 {
				lastPlain = now
				draw(now)
			} else {
				col.mark(now)
			}
		}
	}
	tick.Stop()
	elapsed := time.Since(start)
	interrupted := ctx.Err() != nil
	stopTraffic()
	wg.Wait()
	// Requests the clients gave up on are still queued in the agent; let
	// them finish so the agent stops idle and its numbers are complete.
	drainDeadline := time.Now().Add(drainMax)
	for time.Now().Before(drainDeadline) && (col.agentSeen() < d.wrote.Load() || backend.Waiting(targetName) > 0) {
		time.Sleep(20 * time.Millisecond)
	}
	// One last look at the pool before the agent stops.
	if states, err := pl.Snapshot(context.Background()); err == nil {
		col.poolState(time.Now(), states, backend.Waiting(targetName))
	}
	h.elapsed = elapsed
	draw(time.Now())
	stopAgent()
	if err := <-agentErr; err != nil && runErr == nil {
		runErr = err
	}
	if runErr == nil && elapsed < opts.Duration && !interrupted {
		runErr = errors.New("agent stopped before the end of the demo")
	}
	if runErr != nil {
		return nil, fmt.Errorf("run agent: %w", runErr)
	}
	res = &result{col: col, interrupted: interrupted, originHits: org.hits.Load(), logPath: logPath}
	fmt.Fprint(opts.Out, col.summary(elapsed, interrupted, res.originHits, logPath))
	return res, nil
}

// configYAML is the demo's proxy-hopper config: one target for the origin
// through the upstreams, every other feature off.
func configYAML(port int, originURL string, addrs, roles []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# proxy-hopper demo config, written by "proxy-hopper demo".
server:
  host: 127.0.0.1
  port: %d
  logLevel: INFO
  backend: memory
  metrics: false
  probe: false
  admin: false
  shutdownTimeout: 2s
  allowDestinations: [127.0.0.0/8]   # the demo's origins are local

targets:
  - name: %s
    regex: '^%s(/|$)'
    minRequestInterval: %s
    maxQueueWait: %s
    numRetries: %d
    ipFailuresUntilQuarantine: %d
    quarantineTime: %s
    ipList:
`, port, targetName, regexp.QuoteMeta(originURL), minRequestInterval, maxQueueWait, numRetries, failuresToQuar, quarantineTime)
	for i, a := range addrs {
		fmt.Fprintf(&b, "      - %q # %s\n", a, roles[i])
	}
	return b.String()
}

// driver is the clients: each sends one header-mode request after another.
type driver struct {
	agentURL, originURL string
	hc                  *http.Client
	col                 *collector
	wrote               atomic.Int64 // requests fully sent to the agent
}

var paths = []string{"/api/items", "/api/items/%d", "/api/time", "/api/echo?msg=hello-%d"}

func (d *driver) loop(ctx context.Context, id int) {
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			return
		}
		p := paths[(id+i)%len(paths)]
		if strings.Contains(p, "%d") {
			p = fmt.Sprintf(p, i%5+1)
		}
		if err := d.one(ctx, id, p); err != nil {
			if ctx.Err() != nil {
				d.col.cancel()
				return
			}
			d.col.clientError(err)
			select { // don't spin on a broken agent
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func (d *driver) one(ctx context.Context, id int, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.agentURL+path, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set(proxy.HeaderTarget, d.originURL)
	req.Header.Set(proxy.HeaderTag, "demo-client-"+strconv.Itoa(id))
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				d.wrote.Add(1)
			}
		},
	}))
	start := time.Now()
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	ok := false
	if resp.StatusCode == http.StatusOK {
		var v struct {
			Origin string `json:"origin"`
		}
		if err := json.Unmarshal(body, &v); err != nil || v.Origin != originMarker {
			return fmt.Errorf("GET %s: 200 without the origin's JSON: %.80q", path, body)
		}
		ok = true
	}
	d.col.response(resp.StatusCode, ok, time.Since(start))
	return nil
}
