// Package prober checks, in the background, that every upstream IP in use
// still works: each IP is probed with a GET through the upstream proxy
// itself, its reachability and latency recorded and reported (metrics,
// Status). Beyond metrics, it can feed the pools: N consecutive failed
// probes quarantine an IP in every target that uses it, and a successful
// probe can release a quarantined IP early.
//
// A probe never takes an IP away from traffic. An IP is probed only when,
// in every target whose pool holds it, it is either quarantined or free
// right now (not in use, cooldown over): an IP in use or cooling down in
// any target is skipped for the round, so probes respect
// minRequestInterval. The prober does not take the IP while it probes: a
// request that comes meanwhile gets it as usual (the probe goes to the
// probe URL, not to the target's site), and a probe starts no cooldown. A
// probe URL that hangs therefore holds nothing back.
package prober

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// Failure reasons, as proxy-hopper labels them.
const (
	// ReasonTimeout: no answer within the probe timeout.
	ReasonTimeout = "timeout"
	// ReasonProxyUnreachable: no TCP connection to the upstream proxy.
	ReasonProxyUnreachable = "proxy_unreachable"
	// ReasonConnectionError: connected, then the exchange failed (closed,
	// reset, CONNECT refused, TLS error, malformed answer).
	ReasonConnectionError = "connection_error"
	// ReasonHTTPError: an answer with status 500 or more.
	ReasonHTTPError = "http_error"
)

// Why an IP was not probed in a round (Report.Skipped).
const (
	// SkipBusy: in use or cooling down in some target.
	SkipBusy = "busy"
	// SkipMaxPerHour: MaxPerHour probes in the last hour already.
	SkipMaxPerHour = "max_per_hour"
	// SkipGone: no target's pool holds the IP any more.
	SkipGone = "gone"
	// SkipError: a pool could not say the IP's state.
	SkipError = "error"
	// SkipLocal: the probe failed for want of the agent's own resources
	// (descriptors, buffers, memory, local ports): no verdict on the IP.
	SkipLocal = "local_error"
)

// Pool is what the prober needs of a target's pool; *pool.Pool has it.
type Pool interface {
	Quarantine(ctx context.Context, addr string, until time.Time) error
	ReleaseQuarantine(ctx context.Context, addr string) error
	State(ctx context.Context, addr string) (pool.IPState, error)
	Config() pool.Config
}

var _ Pool = (*pool.Pool)(nil)

// Target is one target's pool and the upstreams it uses, by pool address.
type Target struct {
	Name      string
	Pool      Pool
	Upstreams map[string]proxy.Upstream
}

// Options configures a Prober.
type Options struct {
	// URLs are probed in turn, round-robin per IP. At least one.
	URLs []string
	// Interval is the time from the start of one round to the next.
	Interval time.Duration
	// Timeout bounds one probe, from connect to response head.
	Timeout time.Duration
	// FailuresUntilQuarantine consecutive failed probes quarantine the IP
	// in every target that uses it, for that target's quarantine time.
	// 0 turns this off.
	FailuresUntilQuarantine int
	// ReleasesQuarantine lets a successful probe release the IP from
	// quarantine, in every target where it is quarantined.
	ReleasesQuarantine bool
	// MaxPerHour caps the probes of one IP in any hour; 0 is no cap.
	MaxPerHour int
	// Concurrency bounds the probes in flight (default 16).
	Concurrency int
	// Jitter is the most a probe's start is delayed within its round, at
	// random, so probes do not all leave at once (default Interval/10;
	// negative: none).
	Jitter time.Duration
	// Dialer makes the connections to the upstream proxies (nil: a plain
	// net.Dialer). The agent passes its marking dialer in transparent mode.
	Dialer *net.Dialer
	// Clock schedules rounds and jitter and dates results, and counts the
	// hour of MaxPerHour (default wall clock). Probe latency and timeout
	// are always real time.
	Clock pool.Clock
	// Rand returns a number in [0, 1) for jitter (default math/rand/v2).
	Rand func() float64
	// OnProbe is called after each probe with the IP's new status.
	OnProbe func(Status)
	// OnForget is called for each IP SetTargets drops (no target uses it
	// any more): no OnProbe of it follows, unless a later SetTargets
	// brings it back.
	OnForget func(addr string)
	Logger   *slog.Logger
	// Debug logs every probe (server.debugProbes).
	Debug bool
}

// Status is the last probe of one IP.
type Status struct {
	Addr     string
	Provider string
	Region   string
	// At is when the last probe started (Options.Clock).
	At time.Time
	// URL is the URL it fetched.
	URL string
	// OK is whether it passed: an answer with a status below 500.
	OK bool
	// Reason is the failure reason (Reason*), empty when OK.
	Reason string
	// StatusCode is the HTTP status of the answer, 0 without one.
	StatusCode int
	// Latency is the time to the answer's head (to the failure when it
	// failed).
	Latency time.Duration
	// Error describes a failure.
	Error string
	// ConsecutiveFailures counts failed probes since the last success, or
	// since the probe that quarantined the IP (counted again from 1 at the
	// next failure).
	ConsecutiveFailures int
	// Probes counts this IP's probes since the prober started.
	Probes int
}

// Report says what a round did with each IP.
type Report struct {
	Probed  []string          // addresses probed, sorted
	Skipped map[string]string // address -> Skip* reason
}

// Prober probes the upstream IPs of a set of targets.
type Prober struct {
	opts Options
	log  *slog.Logger

	// report serialises recording a probe's result (and OnProbe) with
	// SetTargets dropping IPs (and OnForget). Taken before mu.
	report  sync.Mutex
	mu      sync.Mutex
	targets []Target
	used    map[string]bool // addresses of targets
	ips     map[string]*ipState
}

type ipState struct {
	status Status
	probed bool
	next   int         // index of the next URL
	reset  bool        // the failure count starts again at the next probe
	recent []time.Time // starts of the probes in the last hour (MaxPerHour)
}

// Defaults of Options.
const (
	DefaultInterval    = 60 * time.Second
	DefaultTimeout     = 10 * time.Second
	DefaultConcurrency = 16
)

// New returns a prober of targets' IPs; Run starts it.
// maxProbeHeadBytes bounds the head of a probe's answer, as the proxy
// bounds every head it reads (64 KiB): a larger one fails the probe with
// connection_error instead of being buffered.
const maxProbeHeadBytes = 64 << 10

func New(targets []Target, opts Options) (*Prober, error) {
	if len(opts.URLs) == 0 {
		return nil, errors.New("prober: no probe URLs")
	}
	for i, raw := range opts.URLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("prober: probe URL %d (%q): not an http:// or https:// URL", i, raw)
		}
	}
	switch {
	case opts.FailuresUntilQuarantine < 0:
		return nil, errors.New("prober: failures until quarantine must not be negative")
	case opts.MaxPerHour < 0:
		return nil, errors.New("prober: max probes per hour must not be negative")
	case opts.Interval < 0 || opts.Timeout < 0:
		return nil, errors.New("prober: interval and timeout must not be negative")
	}
	if opts.Interval == 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.Jitter == 0 {
		opts.Jitter = opts.Interval / 10
	}
	if opts.Clock == nil {
		opts.Clock = pool.RealClock{}
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &Prober{opts: opts, log: opts.Logger.With("component", "prober"), ips: map[string]*ipState{}}
	p.SetTargets(targets)
	return p, nil
}

// SetTargets replaces the targets whose IPs are probed, from the next
// round on (for a configuration reload). Statuses of IPs no target uses
// any more are dropped.
func (p *Prober) SetTargets(targets []Target) {
	p.report.Lock()
	defer p.report.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.targets = slices.Clone(targets)
	used := map[string]bool{}
	for _, t := range targets {
		for addr := range t.Upstreams {
			used[addr] = true
		}
	}
	var gone []string
	for addr := range p.used {
		if !used[addr] {
			gone = append(gone, addr)
		}
	}
	p.used = used
	for addr := range p.ips {
		if !used[addr] {
			delete(p.ips, addr)
		}
	}
	if p.opts.OnForget != nil {
		slices.Sort(gone)
		for _, addr := range gone {
			p.opts.OnForget(addr)
		}
	}
}

// Status returns the last probe of addr; false if it was never probed.
func (p *Prober) Status(addr string) (Status, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.ips[addr]
	if !ok || !st.probed {
		return Status{}, false
	}
	return st.status, true
}

// Statuses returns the last probe of every IP probed so far, by address.
func (p *Prober) Statuses() []Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Status, 0, len(p.ips))
	for _, st := range p.ips {
		if st.probed {
			out = append(out, st.status)
		}
	}
	slices.SortFunc(out, func(a, b Status) int { return compare(a.Addr, b.Addr) })
	return out
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Run probes a round at once, then one every Interval, until ctx ends. It
// returns once the probes in flight have stopped.
func (p *Prober) Run(ctx context.Context) error {
	p.mu.Lock()
	n := len(p.addresses())
	p.mu.Unlock()
	p.log.Info("prober started", "ips", n, "urls", len(p.opts.URLs), "interval", p.opts.Interval, "timeout", p.opts.Timeout,
		"failures_until_quarantine", p.opts.FailuresUntilQuarantine, "releases_quarantine", p.opts.ReleasesQuarantine,
		"max_per_hour", p.opts.MaxPerHour)
	defer p.log.Info("prober stopped")
	for {
		start := p.opts.Clock.Now()
		r := p.Round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		p.log.Debug("probe round done", "probed", len(r.Probed), "skipped", len(r.Skipped))
		if !p.sleep(ctx, p.opts.Interval-p.opts.Clock.Now().Sub(start)) {
			return nil
		}
	}
}

// sleep waits d on the clock; false if ctx ended first.
func (p *Prober) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	ch := make(chan struct{})
	t := p.opts.Clock.AfterFunc(d, func() { close(ch) })
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		t.Stop()
		return false
	}
}

// ip is one address to probe: its upstream and the pools that hold it.
type ip struct {
	up    proxy.Upstream
	pools []Pool
}

// addresses lists every address of the targets, sorted. Caller holds mu.
func (p *Prober) addresses() []ip {
	byAddr := map[string]*ip{}
	for _, t := range p.targets {
		for addr, up := range t.Upstreams {
			e, ok := byAddr[addr]
			if !ok {
				e = &ip{up: up}
				byAddr[addr] = e
			}
			e.pools = append(e.pools, t.Pool)
		}
	}
	out := make([]ip, 0, len(byAddr))
	for _, e := range byAddr {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b ip) int { return compare(a.up.Addr, b.up.Addr) })
	return out
}

// Round probes every IP once (those it may probe) and waits for the
// probes to end. Each probe starts after its own random jitter.
func (p *Prober) Round(ctx context.Context) Report {
	p.mu.Lock()
	ips := p.addresses()
	p.mu.Unlock()
	rep := Report{Skipped: map[string]string{}}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, p.opts.Concurrency)
	)
	for _, e := range ips {
		var delay time.Duration
		if p.opts.Jitter > 0 {
			delay = time.Duration(p.opts.Rand() * float64(p.opts.Jitter))
		}
		wg.Go(func() {
			if !p.sleep(ctx, delay) {
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			skip := p.probeIP(ctx, e)
			<-sem
			mu.Lock()
			defer mu.Unlock()
			if skip != "" {
				rep.Skipped[e.up.Addr] = skip
			} else {
				rep.Probed = append(rep.Probed, e.up.Addr)
			}
		})
	}
	wg.Wait()
	slices.Sort(rep.Probed)
	return rep
}

// probeIP probes e if it may (see the package comment) and acts on the
// result; it returns why not otherwise.
func (p *Prober) probeIP(ctx context.Context, e ip) (skip string) {
	addr := e.up.Addr
	if p.opts.MaxPerHour > 0 && !p.allowed(addr) {
		return SkipMaxPerHour
	}
	known := 0
	for _, pl := range e.pools {
		st, err := pl.State(ctx, addr)
		if errors.Is(err, pool.ErrUnknownIP) {
			continue
		}
		if err != nil {
			p.log.Warn("probe: state of IP", "address", addr, "err", err)
			return SkipError
		}
		known++
		switch st.State {
		case pool.StateAvailable, pool.StateQuarantined:
		default:
			return SkipBusy
		}
	}
	if known == 0 {
		return SkipGone
	}
	// Verdicts are acted on with a context that outlives a shutdown.
	bg := context.WithoutCancel(ctx)
	target, at := p.start(addr)
	res := p.probe(ctx, e.up, target)
	if ctx.Err() != nil {
		return "" // cut by shutdown: no verdict on the IP
	}
	if res.local {
		// The agent's own shortage says nothing about the IP.
		p.log.Warn("probe: no verdict, the agent is out of local resources", "address", addr, "err", res.err)
		return SkipLocal
	}
	p.report.Lock()
	st, ok := p.finish(e.up, target, at, res)
	if ok && p.opts.OnProbe != nil {
		p.opts.OnProbe(st)
	}
	p.report.Unlock()
	if !ok {
		return SkipGone // dropped by SetTargets while its probe ran
	}
	if p.opts.Debug {
		p.log.Debug("probe", "address", addr, "url", target, "ok", st.OK, "reason", st.Reason, "status", st.StatusCode,
			"latency", st.Latency, "err", st.Error)
	}
	switch {
	case !st.OK && p.opts.FailuresUntilQuarantine > 0 && st.ConsecutiveFailures >= p.opts.FailuresUntilQuarantine:
		p.quarantine(bg, e, st) // an IP a request took meanwhile goes when released
	case st.OK && p.opts.ReleasesQuarantine:
		p.release(bg, e)
	}
	return ""
}

// allowed reports whether addr may be probed under MaxPerHour.
func (p *Prober) allowed(addr string) bool {
	now := p.opts.Clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state(addr)
	keep := st.recent[:0]
	for _, at := range st.recent {
		if now.Sub(at) < time.Hour {
			keep = append(keep, at)
		}
	}
	st.recent = keep
	return len(st.recent) < p.opts.MaxPerHour
}

// state returns addr's record, creating it. Caller holds mu.
func (p *Prober) state(addr string) *ipState {
	st, ok := p.ips[addr]
	if !ok {
		st = &ipState{}
		p.ips[addr] = st
	}
	return st
}

// start counts a probe of addr and returns the URL it fetches and the
// time it starts.
func (p *Prober) start(addr string) (string, time.Time) {
	now := p.opts.Clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state(addr)
	target := p.opts.URLs[st.next%len(p.opts.URLs)]
	st.next++
	if p.opts.MaxPerHour > 0 {
		st.recent = append(st.recent, now)
	}
	return target, now
}

// finish records a probe's result and returns the IP's new status; false
// (nothing recorded) if no target uses the IP any more.
func (p *Prober) finish(up proxy.Upstream, target string, at time.Time, r result) (Status, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.used[up.Addr] {
		return Status{}, false
	}
	st := p.state(up.Addr)
	s := &st.status
	s.Addr, s.Provider, s.Region, s.At = up.Addr, up.Provider, up.Region, at
	s.URL, s.OK, s.Reason, s.StatusCode, s.Latency, s.Error = target, r.reason == "", r.reason, r.code, r.latency, r.err
	s.Probes++
	if s.OK || st.reset {
		s.ConsecutiveFailures = 0
	}
	st.reset = false
	if !s.OK {
		s.ConsecutiveFailures++
	}
	st.probed = true
	if !s.OK && p.opts.FailuresUntilQuarantine > 0 && s.ConsecutiveFailures >= p.opts.FailuresUntilQuarantine {
		st.reset = true // this one quarantines: counted again from the next
	}
	return *s, true
}

// quarantine takes e out of every pool where it is not quarantined yet,
// each for its target's quarantine time.
func (p *Prober) quarantine(ctx context.Context, e ip, st Status) {
	addr := e.up.Addr
	n := 0
	for _, pl := range e.pools {
		s, err := pl.State(ctx, addr)
		if err != nil || s.State == pool.StateQuarantined || !s.PendingQuarantine.IsZero() {
			continue
		}
		until := p.opts.Clock.Now().Add(pl.Config().QuarantineTime)
		if err := pl.Quarantine(pool.WithCause(ctx, "probe_"+st.Reason), addr, until); err != nil {
			p.log.Error("probe: quarantine IP", "address", addr, "err", err)
			continue
		}
		n++
	}
	p.log.Warn("ip quarantined after failed probes", "address", addr, "failures", st.ConsecutiveFailures,
		"reason", st.Reason, "targets", n)
}

// release releases e from quarantine in every pool where it is quarantined.
func (p *Prober) release(ctx context.Context, e ip) {
	addr := e.up.Addr
	n := 0
	for _, pl := range e.pools {
		s, err := pl.State(ctx, addr)
		if err != nil || s.State != pool.StateQuarantined {
			continue
		}
		if err := pl.ReleaseQuarantine(ctx, addr); err != nil {
			if !errors.Is(err, pool.ErrNotQuarantined) {
				p.log.Error("probe: release IP from quarantine", "address", addr, "err", err)
			}
			continue
		}
		n++
	}
	if n > 0 {
		p.log.Info("ip released from quarantine after a successful probe", "address", addr, "targets", n)
	}
}

// result is one probe's outcome; reason is empty on success.
type result struct {
	local   bool // failed on the agent's own shortage: no verdict
	reason  string
	code    int
	latency time.Duration
	err     string
}

// probe fetches target through the upstream proxy up, on a connection of
// its own, with certificate checks off (as proxy-hopper does: the probe
// tests the path, not the origin).
func (p *Prober) probe(ctx context.Context, up proxy.Upstream, target string) result {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	d := p.opts.Dialer
	if d == nil {
		d = &net.Dialer{}
	}
	var dialFailed, local atomic.Bool
	proxyURL := &url.URL{Scheme: "http", Host: up.Addr}
	if up.Username != "" || up.Password != "" {
		proxyURL.User = url.UserPassword(up.Username, up.Password)
	}
	tr := &http.Transport{
		Proxy: http.ProxyURL(proxyURL),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				dialFailed.Store(true)
				local.Store(proxy.IsLocalError(err))
			}
			return c, err
		},
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as proxy-hopper: reachability only
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: maxProbeHeadBytes,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return result{reason: ReasonConnectionError, err: err.Error()}
	}
	req.Header.Set("User-Agent", "proxy-hopper-prober")
	start := time.Now()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	lat := time.Since(start)
	if err != nil && (local.Load() || proxy.IsLocalError(err)) {
		return result{local: true, latency: lat, err: err.Error()}
	}
	if err != nil {
		reason := ReasonConnectionError
		var ne net.Error
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
			(errors.As(err, &ne) && ne.Timeout()):
			reason = ReasonTimeout
		case dialFailed.Load():
			reason = ReasonProxyUnreachable
		}
		return result{reason: reason, latency: lat, err: err.Error()}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return result{reason: ReasonHTTPError, code: resp.StatusCode, latency: lat, err: resp.Status}
	}
	return result{code: resp.StatusCode, latency: lat}
}
