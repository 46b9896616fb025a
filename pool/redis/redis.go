// Package redis is the pool.Backend that many agents share: every target's
// pool lives in Redis, and each operation is one Lua script, so it is
// atomic across agents and costs one round trip.
//
// Keys are <Prefix>{<target>}:<kind> (Prefix "ph:" by default); the braces
// are a Redis Cluster hash tag, so one target's keys share a slot:
//
//	ph:{t}:meta   hash   seeded=1, seq (cooling tie-break counter)
//	ph:{t}:ip     hash   addr -> state (available, cooling, quarantined, in use + lease token)
//	ph:{t}:ready  list   available IPs, the one free longest first
//	ph:{t}:cool   zset   cooling IPs by readyAt (Unix ms)
//	ph:{t}:lease  zset   in-use IPs by lease deadline (Unix ms)
//	ph:{t}:quar   zset   quarantined IPs by release time (Unix ms)
//	ph:{t}:fail   hash   addr -> consecutive failures
//
// An IP handed out is a lease with a deadline in Redis. The agent holding it
// renews its leases every LeaseTTL/3; a lease whose holder died runs out and
// the next operation on the pool puts the IP back, so no IP is lost with an
// agent. A lease carries a token known only to its holder: a return from an
// agent that lost its lease (cut off from Redis for longer than LeaseTTL,
// or Redis restarted empty) is ignored instead of freeing someone else's IP.
//
// Times come from the caller's pool.Clock, never from Redis: agents sharing
// a pool must keep their clocks in sync (NTP), and clock skew between them
// adds to or takes from minRequestInterval across agents.
//
// When Redis cannot be reached, the first failed operation marks the backend
// down (logged once): blocked Pops and every later operation fail at once
// with an error wrapping pool.ErrBackendUnavailable, and returns are kept to
// be replayed. Redis is pinged every ProbeInterval; once it answers, pools it
// lost are seeded again, the kept returns are replayed, leases renewed, and
// the backend is up again (logged once).
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

var (
	_ pool.Backend       = (*Backend)(nil)
	_ pool.ExpiryWatcher = (*Backend)(nil)
)

// Defaults of Options.
const (
	DefaultPrefix        = "ph:"
	DefaultLeaseTTL      = 30 * time.Second
	DefaultPollInterval  = 20 * time.Millisecond
	DefaultProbeInterval = 200 * time.Millisecond
	DefaultDrainTimeout  = time.Minute

	// Connection timeouts applied by New unless the URL sets them: fail
	// fast rather than retry, since the backend has its own recovery.
	defaultIOTimeout = 2 * time.Second

	pollMin = time.Millisecond
)

// errDown is what operations return while Redis is known to be unreachable.
var errDown = fmt.Errorf("%w: redis is unreachable", pool.ErrBackendUnavailable)

// Options configures a Backend; zero values mean the defaults.
type Options struct {
	// Prefix starts every key; it must not contain '{' or '}'.
	Prefix string
	// LeaseTTL is how long an IP stays leased to an agent that stopped
	// renewing it (it died, or lost Redis): the longest an IP can be out
	// of the pool after its holder is gone.
	LeaseTTL time.Duration
	// PollInterval is the longest a blocked Pop goes without looking at
	// Redis. Returns made by this agent, and cooldown ends it knows of,
	// wake waiters at once; returns made by other agents are seen at the
	// next poll (backing off from 1ms to PollInterval).
	PollInterval time.Duration
	// ProbeInterval is how often an unreachable Redis is pinged.
	ProbeInterval time.Duration
	// DrainTimeout bounds how long Close keeps the connection open for
	// returns of IPs still out.
	DrainTimeout time.Duration
	// NoAutoPipeline sends each script on its own round trip. By default
	// (standalone Redis), a script called while others are in flight is
	// batched with them into one pipeline (go-redis AutoPipeline): about
	// half the CPU per operation, in the agent and in Redis, under load. A
	// lone call always takes the direct round trip.
	NoAutoPipeline bool
	Clock          pool.Clock   // default wall clock
	Logger         *slog.Logger // default slog.Default()
}

func (o *Options) defaults() error {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return fmt.Errorf("redis key prefix %q: must not contain '{' or '}'", o.Prefix)
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = DefaultProbeInterval
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Clock == nil {
		o.Clock = pool.RealClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Backend stores pools in Redis. It is safe for concurrent use.
type Backend struct {
	client goredis.UniversalClient
	ap     *goredis.AutoPipeliner // nil: scripts go through client
	calls  atomic.Int64           // scripts in flight
	opts   Options
	clock  pool.Clock
	log    *slog.Logger
	id     string        // this agent's part of lease tokens
	seq    atomic.Uint64 // the other part
	ctx    context.Context
	cancel context.CancelFunc

	targets sync.Map // name -> *target

	down      atomic.Bool
	downSince atomic.Int64 // Unix ns

	closed      atomic.Bool
	outstanding atomic.Int64 // leases held plus pops in flight; Close drains them
	finishOnce  sync.Once
	stop        chan struct{} // closed by finish
	loopDone    chan struct{}
	renewNow    chan struct{} // cap 1: the loop renews leases now

	wmu      sync.Mutex
	watchers map[string][]*watcher
}

// target is the local side of one pool: the leases this agent holds and
// its callers blocked in Pop. mu guards everything below it.
type target struct {
	name string
	keys []string
	wake chan struct{} // cap 1: something may have come free
	// returning is held shared by a Push from taking its lease until its
	// script is done, and exclusively by renewal from reading the leases
	// until its script is done: renewal may take back an IP it finds
	// free, which must not be one returned meanwhile.
	returning sync.RWMutex

	mu      sync.Mutex
	addrs   []string          // as last seeded, to seed again if Redis lost them
	leases  map[string]*lease // addr -> lease held by this agent
	queue   []*waiter         // blocked callers, first come first
	batch   []*waiter         // callers the dispatcher is fetching IPs for
	running bool              // the dispatcher goroutine is running
}

type lease struct {
	token   string
	reset   bool      // ResetFailures was called: done with the return
	pending bool      // returned while Redis was down: replay
	readyAt time.Time // of the pending return
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

type popResult struct {
	addr string
	err  error
}

type waiter struct {
	except []string       // PopExcept's set; nil for Pop
	ch     chan popResult // cap 1
	noWait bool           // timeout <= 0: answered by the next fetch
	done   bool           // a result was sent
	gone   bool           // gave up (timeout, ctx)
}

type watcher struct{ f func() }

// New connects to the Redis at rawURL: redis://[user:password@]host:port/db,
// rediss:// for TLS, unix:///path?db=N, with go-redis query options
// (dial_timeout=3s, pool_size=50, skip_verify=true, ...). Two options pick
// another topology:
//
//	redis://[:sentinel-password@]sentinel1:26379/0?master_name=mymaster&addr=sentinel2:26379
//	    Sentinel (go-redis ParseFailoverURL); the password of the data
//	    nodes is the query option password=...
//	redis://[user:password@]node1:6379?addr=node2:6379&addr=node3:6379
//	    Cluster (go-redis ParseClusterURL): any addr= option means cluster
//
// Unless the URL sets them, dial and I/O timeouts are 2s and commands are
// not retried: the backend fails fast and recovers by itself. New does not
// wait for Redis: the first Seed does.
func New(rawURL string, opts Options) (*Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the url.Error would repeat the password
		}
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	q := u.Query()
	// Our defaults, for the options the URL leaves out.
	retries := func(v *int) {
		if !q.Has("max_retries") {
			*v = -1
		}
	}
	dial := func(v *int) {
		if !q.Has("dialer_retries") {
			*v = 1
		}
	}
	timeouts := func(d, r, w *time.Duration) {
		for _, o := range []struct {
			key string
			v   *time.Duration
		}{{"dial_timeout", d}, {"read_timeout", r}, {"write_timeout", w}} {
			if !q.Has(o.key) {
				*o.v = defaultIOTimeout
			}
		}
	}
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	var client goredis.UniversalClient
	switch {
	case q.Has("master_name"):
		fo, err := goredis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("parse redis sentinel url: %w", err)
		}
		retries(&fo.MaxRetries)
		dial(&fo.DialerRetries)
		timeouts(&fo.DialTimeout, &fo.ReadTimeout, &fo.WriteTimeout)
		client = goredis.NewFailoverClient(fo)
	case q.Has("addr"):
		co, err := goredis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("parse redis cluster url: %w", err)
		}
		retries(&co.MaxRetries)
		dial(&co.DialerRetries)
		timeouts(&co.DialTimeout, &co.ReadTimeout, &co.WriteTimeout)
		co.MaintNotificationsConfig = off
		client = goredis.NewClusterClient(co)
	default:
		ro, err := goredis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("parse redis url: %w", err)
		}
		retries(&ro.MaxRetries)
		dial(&ro.DialerRetries)
		timeouts(&ro.DialTimeout, &ro.ReadTimeout, &ro.WriteTimeout)
		ro.MaintNotificationsConfig = off
		client = goredis.NewClient(ro)
	}
	return NewWithClient(client, opts)
}

// NewWithClient uses client, which the backend owns from now on (Close
// closes it): for go-redis options a URL cannot express. Any topology
// works, Cluster included: every script touches only one target's keys,
// which share a hash slot.
func NewWithClient(client goredis.UniversalClient, opts Options) (*Backend, error) {
	if err := opts.defaults(); err != nil {
		_ = client.Close()
		return nil, err
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	b := &Backend{
		client:   client,
		opts:     opts,
		clock:    opts.Clock,
		log:      opts.Logger.With("component", "redis"),
		id:       hex.EncodeToString(id[:]),
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),
		renewNow: make(chan struct{}, 1),
		watchers: map[string][]*watcher{},
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	if c, ok := client.(*goredis.Client); ok && !opts.NoAutoPipeline {
		ap, err := c.AutoPipeline()
		if err != nil {
			_ = client.Close()
			return nil, fmt.Errorf("redis auto-pipeline: %w", err)
		}
		b.ap = ap
	}
	go b.loop()
	return b, nil
}

// Keys returns the Redis keys of target, as the scripts get them.
func Keys(prefix, target string) []string {
	base := prefix + "{" + target + "}:"
	return []string{base + "meta", base + "ip", base + "ready", base + "cool", base + "lease", base + "quar", base + "fail"}
}

func (b *Backend) target(name string) *target {
	if t, ok := b.targets.Load(name); ok {
		return t.(*target)
	}
	t, _ := b.targets.LoadOrStore(name, &target{
		name:   name,
		keys:   Keys(b.opts.Prefix, name),
		wake:   make(chan struct{}, 1),
		leases: map[string]*lease{},
	})
	return t.(*target)
}

func (t *target) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (b *Backend) token() string {
	return b.id + "." + strconv.FormatUint(b.seq.Add(1), 36)
}

func msFloor(t time.Time) int64 { return t.UnixMilli() }

// readyMs is readyAt for a push at now: rounded up, unless it is not
// after now (ready at once, even within now's millisecond).
func readyMs(readyAt, now time.Time) int64 {
	if !readyAt.After(now) {
		return msFloor(now)
	}
	return msCeil(readyAt)
}

// msCeil rounds up, so that an IP is never ready before its readyAt.
func msCeil(t time.Time) int64 {
	m := t.UnixMilli()
	if t.Nanosecond()%int(time.Millisecond) != 0 {
		m++
	}
	return m
}

// call runs script for t: no state checks, raw errors. A call made while
// others are in flight goes through the pipeliner, batched with them; a
// lone call takes the direct round trip, which is quicker when idle.
func (b *Backend) call(ctx context.Context, t *target, s *goredis.Script, args ...any) (any, error) {
	var c goredis.Scripter = b.client
	if n := b.calls.Add(1); n > 1 && b.ap != nil {
		c = b.ap
	}
	defer b.calls.Add(-1)
	return s.Run(ctx, c, t.keys, args...).Result()
}

// run runs script for t unless Redis is known to be down. If Redis lost
// the pool (restarted empty) and this agent seeded it, it seeds it again
// and runs the script once more. Errors are classified: see fail.
func (b *Backend) run(ctx context.Context, t *target, s *goredis.Script, args ...any) (any, error) {
	if b.finished() {
		return nil, pool.ErrClosed
	}
	if b.down.Load() {
		return nil, errDown
	}
	return b.do(ctx, t, s, args...)
}

// do is run without the state checks, for the recovery itself.
func (b *Backend) do(ctx context.Context, t *target, s *goredis.Script, args ...any) (any, error) {
	res, err := b.call(ctx, t, s, args...)
	if err != nil && isUnknown(err) && b.reseed(ctx, t) {
		res, err = b.call(ctx, t, s, args...)
	}
	if err != nil {
		return nil, b.fail(ctx, t, err)
	}
	return res, nil
}

func isUnknown(err error) bool {
	return err != nil && strings.Contains(err.Error(), errUnknownTarget)
}

// fail turns a Redis error into the pool's: unknown target, closed, or
// backend unavailable (which marks the backend down). Other server errors
// (a key of the wrong type under our prefix...) are returned as they are.
func (b *Backend) fail(ctx context.Context, t *target, err error) error {
	switch {
	case isUnknown(err):
		return fmt.Errorf("%w: %s", pool.ErrUnknownTarget, t.name)
	case errors.Is(err, goredis.ErrClosed) || b.finished():
		return pool.ErrClosed
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return ctx.Err()
	}
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		if strings.HasPrefix(msg, "ERR") || strings.HasPrefix(msg, "WRONGTYPE") {
			return fmt.Errorf("redis: %w", err)
		}
	}
	b.markDown(err)
	return fmt.Errorf("%w: %v", pool.ErrBackendUnavailable, err)
}

// reseed restores t's pool if Redis has none (it restarted empty): with
// the IPs this agent last seeded, its own leases kept, and every other IP
// unclaimed for LeaseTTL/2 so that agents holding one can re-assert it
// (see seedScript). It reports whether t is in Redis now.
func (b *Backend) reseed(ctx context.Context, t *target) bool {
	t.mu.Lock()
	addrs := t.addrs
	var own []string
	for a, l := range t.leases {
		if !l.pending {
			own = append(own, a, l.token)
		}
	}
	t.mu.Unlock()
	if addrs == nil {
		return false
	}
	now := msFloor(b.clock.Now())
	args := seedArgs(now, "1", now+b.opts.LeaseTTL.Milliseconds()/2, now+b.opts.LeaseTTL.Milliseconds(), addrs)
	for _, v := range own {
		args = append(args, v)
	}
	res, err := b.call(ctx, t, seedScript, args...)
	if err != nil {
		return false
	}
	if n, _ := res.(int64); n == 1 {
		b.log.Warn("redis had lost the pool (restarted without persistence?): restored it; IPs held elsewhere are out until re-asserted, the rest come free",
			"target", t.name, "ips", len(addrs), "held_here", len(own)/2, "grace", b.opts.LeaseTTL/2)
	}
	// Leases this agent holds are unclaimed if another agent restored the
	// pool: re-assert them now rather than at the next renewal.
	select {
	case b.renewNow <- struct{}{}:
	default:
	}
	t.signal()
	return true
}

func seedArgs(now int64, mode string, grace, own int64, addrs []string) []any {
	args := make([]any, 0, 5+len(addrs))
	args = append(args, now, mode, grace, own, len(addrs))
	for _, a := range addrs {
		args = append(args, a)
	}
	return args
}

// Seed implements pool.Backend.
func (b *Backend) Seed(ctx context.Context, name string, addrs []string) error {
	if b.closed.Load() {
		return pool.ErrClosed
	}
	t := b.target(name)
	t.mu.Lock()
	before := t.addrs != nil
	t.mu.Unlock()
	if before && !b.down.Load() {
		// Seeded here before: if Redis lost the pool meanwhile, restore it
		// (keeping leases held here and elsewhere) before reconciling.
		b.reseed(ctx, t)
	}
	if _, err := b.run(ctx, t, seedScript, seedArgs(msFloor(b.clock.Now()), "0", 0, 0, addrs)...); err != nil {
		return err
	}
	t.mu.Lock()
	t.addrs = append([]string{}, addrs...) // non-nil: seeded here, if with no IP
	t.mu.Unlock()
	t.signal()
	return nil
}

// pop leases up to n IPs of t and records the leases. next is the Unix ms
// of the pool's next cooldown end or lease deadline, or -1.
func (b *Backend) pop(ctx context.Context, t *target, n int) (addrs []string, next int64, err error) {
	b.outstanding.Add(1)
	defer b.release(1)
	now := msFloor(b.clock.Now())
	tok := b.token()
	res, err := b.run(context.WithoutCancel(ctx), t, popScript, now, n, tok, now+b.opts.LeaseTTL.Milliseconds())
	if err != nil {
		return nil, 0, err
	}
	arr, _ := res.([]any)
	if len(arr) != 2 {
		return nil, 0, fmt.Errorf("redis: pop: unexpected reply %v", res)
	}
	got, _ := arr[0].([]any)
	next, _ = arr[1].(int64)
	addrs = make([]string, 0, len(got))
	for _, g := range got {
		if s, ok := g.(string); ok {
			addrs = append(addrs, s)
		}
	}
	return b.hold(t, addrs, tok), next, nil
}

// popEach leases an IP for each caller of excepts, in order, each
// outside its except set (nil: any IP) as popExceptScript picks them, and
// records the leases. addrs has one entry per caller, "" for none; next
// is as pop's.
func (b *Backend) popEach(ctx context.Context, t *target, excepts [][]string) (addrs []string, next int64, err error) {
	b.outstanding.Add(1)
	defer b.release(1)
	now := msFloor(b.clock.Now())
	tok := b.token()
	args := []any{now, tok, now + b.opts.LeaseTTL.Milliseconds()}
	for _, ex := range excepts {
		args = append(args, len(ex))
		for _, a := range ex {
			args = append(args, a)
		}
	}
	res, err := b.run(context.WithoutCancel(ctx), t, popExceptScript, args...)
	if err != nil {
		return nil, 0, err
	}
	arr, _ := res.([]any)
	if len(arr) != 2 {
		return nil, 0, fmt.Errorf("redis: pop: unexpected reply %v", res)
	}
	got, _ := arr[0].([]any)
	next, _ = arr[1].(int64)
	if len(got) != len(excepts) {
		return nil, 0, fmt.Errorf("redis: pop: unexpected reply %v", res)
	}
	addrs = make([]string, len(got))
	var leased []string
	for i, g := range got {
		if s, ok := g.(string); ok && s != "" {
			addrs[i] = s
			leased = append(leased, s)
		}
	}
	// An IP hold keeps with its holder here is no one's to hand out.
	kept := b.hold(t, leased, tok)
	if len(kept) < len(leased) {
		for i, a := range addrs {
			if a != "" && !slices.Contains(kept, a) {
				addrs[i] = ""
			}
		}
	}
	return addrs, next, nil
}

// hold records leases taken with tok and returns the IPs to hand out. An
// IP still held here (its lease ran out before it came back, and Redis
// gave it out again) stays with its holder, under the new lease: handing
// it out would put it in two requests, and the holder's return would end
// the new one's lease.
func (b *Backend) hold(t *target, addrs []string, tok string) []string {
	if len(addrs) == 0 {
		return addrs
	}
	out := make([]string, 0, len(addrs))
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range addrs {
		old, ok := t.leases[a]
		switch {
		case ok && !old.pending:
			old.token = tok
			continue
		case ok: // a return kept while Redis was down: void, replaced
		default:
			b.outstanding.Add(1)
		}
		t.leases[a] = &lease{token: tok}
		out = append(out, a)
	}
	return out
}

// release drops n outstanding leases or calls; a closed backend finishes
// once none are left.
func (b *Backend) release(n int64) {
	if b.outstanding.Add(-n) <= 0 && b.closed.Load() {
		b.finish()
	}
}

// Pop implements pool.Backend. A caller that finds no IP waits in this
// agent's queue: callers of one agent are served in arrival order; agents
// compete for IPs as they come free.
func (b *Backend) Pop(ctx context.Context, name string, timeout time.Duration) (string, error) {
	return b.popWait(ctx, name, timeout, nil)
}

// PopExcept implements pool.Backend. Callers of one agent are served in
// arrival order, each with an IP outside its set; agents compete for IPs
// as they come free, as in Pop.
func (b *Backend) PopExcept(ctx context.Context, name string, timeout time.Duration, except []string) (string, error) {
	return b.popWait(ctx, name, timeout, pool.ExceptSet(except))
}

func (b *Backend) popWait(ctx context.Context, name string, timeout time.Duration, except []string) (string, error) {
	if b.closed.Load() {
		return "", pool.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if b.down.Load() {
		return "", errDown
	}
	t := b.target(name)
	t.mu.Lock()
	ahead := len(t.queue)+len(t.batch) > 0
	t.mu.Unlock()
	if !ahead {
		var addrs []string
		var err error
		if except == nil {
			addrs, _, err = b.pop(ctx, t, 1)
		} else {
			addrs, _, err = b.popEach(ctx, t, [][]string{except})
		}
		if err != nil {
			return "", err
		}
		if len(addrs) == 1 && addrs[0] != "" {
			return addrs[0], nil
		}
		if timeout <= 0 {
			return "", pool.ErrNoIP
		}
	}
	return b.wait(ctx, t, timeout, except)
}

// Push implements pool.Backend. Only the holder of addr's lease returns
// it: a push for an IP this agent does not hold (never handed out, pushed
// already, or its lease lost) changes nothing. While Redis is down the
// return is kept and replayed when it is back, and Push returns nil.
func (b *Backend) Push(ctx context.Context, name, addr string, readyAt time.Time) error {
	if b.finished() {
		return pool.ErrClosed
	}
	t := b.target(name)
	t.returning.RLock()
	defer t.returning.RUnlock()
	t.mu.Lock()
	l := t.leases[addr]
	if l != nil && l.pending {
		t.mu.Unlock()
		return nil // a return is already on its way
	}
	delete(t.leases, addr)
	t.mu.Unlock()
	tok := ""
	if l != nil {
		tok = l.token
		if b.down.Load() {
			b.keep(t, addr, l, readyAt)
			return nil
		}
	}
	now := b.clock.Now()
	res, err := b.run(context.WithoutCancel(ctx), t, pushScript, msFloor(now), addr, tok, readyMs(readyAt, now), flag(l != nil && l.reset))
	if err != nil && l != nil && errors.Is(err, pool.ErrBackendUnavailable) {
		b.keep(t, addr, l, readyAt)
		return nil
	}
	if l != nil {
		b.release(1)
	}
	if err != nil {
		return err
	}
	if n, _ := res.(int64); n == 1 {
		t.signal()
	}
	return nil
}

// keep stores a return that could not reach Redis, to replay it.
func (b *Backend) keep(t *target, addr string, l *lease, readyAt time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.leases[addr]; ok {
		b.release(1) // leased again meanwhile: this return is void
		return
	}
	l.pending, l.readyAt = true, readyAt
	t.leases[addr] = l
}

// resetPending reports whether a ResetFailures of addr waits for the
// return of its lease; clear takes it over.
func (t *target) resetPending(addr string, clear bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.leases[addr]
	if l == nil || !l.reset {
		return false
	}
	if clear {
		l.reset = false
	}
	return true
}

// IncrFailures implements pool.Backend.
func (b *Backend) IncrFailures(ctx context.Context, name, addr string) (int, error) {
	t := b.target(name)
	reset := t.resetPending(addr, true)
	res, err := b.run(ctx, t, incrScript, addr, flag(reset))
	if err != nil {
		if reset {
			t.mu.Lock()
			if l := t.leases[addr]; l != nil {
				l.reset = true
			}
			t.mu.Unlock()
		}
		return 0, err
	}
	n, _ := res.(int64)
	return int(n), nil
}

// ResetFailures implements pool.Backend. For an IP this agent holds, the
// reset costs no round trip: it is done by the script that returns the IP
// (no other agent can count failures of an IP it does not hold).
func (b *Backend) ResetFailures(ctx context.Context, name, addr string) error {
	t := b.target(name)
	t.mu.Lock()
	if l := t.leases[addr]; l != nil && !l.pending {
		l.reset = true
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()
	_, err := b.run(ctx, t, resetScript, addr)
	return err
}

// Quarantine implements pool.Backend. A lease this agent held on addr ends.
func (b *Backend) Quarantine(ctx context.Context, name, addr string, until time.Time) error {
	t := b.target(name)
	reset := t.resetPending(addr, false)
	if _, err := b.run(context.WithoutCancel(ctx), t, quarantineScript, addr, msCeil(until), flag(reset)); err != nil {
		return err
	}
	t.mu.Lock()
	_, held := t.leases[addr]
	delete(t.leases, addr)
	t.mu.Unlock()
	if held {
		b.release(1)
	}
	return nil
}

// PopExpired implements pool.Backend. The released IPs are leased to this
// agent until pushed back.
func (b *Backend) PopExpired(ctx context.Context, name string, now time.Time) ([]string, error) {
	b.outstanding.Add(1)
	defer b.release(1)
	t := b.target(name)
	tok := b.token()
	res, err := b.run(context.WithoutCancel(ctx), t, popExpiredScript, msFloor(now), tok, msFloor(b.clock.Now())+b.opts.LeaseTTL.Milliseconds())
	if err != nil {
		return nil, err
	}
	list, _ := res.([]any)
	var out []string
	for _, v := range list {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return b.hold(t, out, tok), nil
}

// NextExpiry implements pool.Backend.
func (b *Backend) NextExpiry(ctx context.Context, name string) (time.Time, bool, error) {
	res, err := b.run(ctx, b.target(name), nextExpiryScript)
	if err != nil {
		return time.Time{}, false, err
	}
	list, _ := res.([]any)
	if len(list) == 0 {
		return time.Time{}, false, nil
	}
	s, _ := list[0].(string)
	ms, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("redis: next expiry %q: %w", s, err)
	}
	return time.UnixMilli(int64(ms)), true, nil
}

// Snapshot implements pool.Backend; IPs are sorted by address. A cooling IP
// whose readyAt has passed and an in-use IP whose lease ran out (its holder
// is gone) are available.
func (b *Backend) Snapshot(ctx context.Context, name string) ([]pool.IPState, error) {
	t := b.target(name)
	res, err := b.run(ctx, t, snapshotScript)
	if err != nil {
		return nil, err
	}
	parts, _ := res.([]any)
	if len(parts) != 5 {
		return nil, fmt.Errorf("redis: snapshot: unexpected reply %v", res)
	}
	pairs := func(v any) map[string]string {
		list, _ := v.([]any)
		m := make(map[string]string, len(list)/2)
		for i := 0; i+1 < len(list); i += 2 {
			k, _ := list[i].(string)
			val, _ := list[i+1].(string)
			m[k] = val
		}
		return m
	}
	scores := func(v any) map[string]int64 {
		m := map[string]int64{}
		for k, s := range pairs(v) {
			f, _ := strconv.ParseFloat(s, 64)
			m[k] = int64(f)
		}
		return m
	}
	ips, fails := pairs(parts[0]), pairs(parts[1])
	cool, quar, leases := scores(parts[2]), scores(parts[3]), scores(parts[4])
	now := msFloor(b.clock.Now())
	out := make([]pool.IPState, 0, len(ips))
	for addr, st := range ips {
		out = append(out, b.view(t, addr, st, fails[addr], cool[addr], quar[addr], leases[addr], now))
	}
	slices.SortFunc(out, func(x, y pool.IPState) int { return strings.Compare(x.Addr, y.Addr) })
	return out, nil
}

// view is one IP as Snapshot lists it, from its state string, failure
// count and scores in cool, quar and lease (Unix ms, 0 when absent).
func (b *Backend) view(t *target, addr, st, fails string, cool, quar, lease, now int64) pool.IPState {
	s := pool.IPState{Addr: addr, State: pool.StateAvailable}
	s.Failures, _ = strconv.Atoi(fails)
	if s.Failures > 0 && t.resetPending(addr, false) {
		s.Failures = 0
	}
	switch st[0] {
	case 'c':
		if cool > now {
			s.State, s.Until = pool.StateCooling, time.UnixMilli(cool)
		}
	case 'q':
		s.State, s.Until = pool.StateQuarantined, time.UnixMilli(quar)
	case 'u', 'U':
		_, rest, _ := strings.Cut(st, "|")
		since, mark, marked := strings.Cut(rest, "|")
		var until int64
		if marked {
			until, _ = strconv.ParseInt(mark, 10, 64)
		}
		switch {
		case lease > now:
			s.State = pool.StateInUse
			ms, _ := strconv.ParseInt(since, 10, 64)
			s.Until = time.UnixMilli(ms)
			if marked {
				s.PendingQuarantine = time.UnixMilli(until)
			}
		case until > now: // its holder is gone: quarantined at the next operation
			s.State, s.Until = pool.StateQuarantined, time.UnixMilli(until)
		}
	}
	return s
}

// State implements pool.Backend.
func (b *Backend) State(ctx context.Context, name, addr string) (pool.IPState, error) {
	t := b.target(name)
	res, err := b.run(ctx, t, stateScript, addr)
	if err != nil {
		return pool.IPState{}, err
	}
	if n, ok := res.(int64); ok && n == -1 {
		return pool.IPState{}, fmt.Errorf("%w: %s", pool.ErrUnknownIP, addr)
	}
	parts, _ := res.([]any)
	if len(parts) != 5 {
		return pool.IPState{}, fmt.Errorf("redis: state: unexpected reply %v", res)
	}
	str := func(i int) string { v, _ := parts[i].(string); return v }
	score := func(i int) int64 { f, _ := strconv.ParseFloat(str(i), 64); return int64(f) }
	st := str(0)
	if st == "" {
		return pool.IPState{}, fmt.Errorf("redis: state: unexpected reply %v", res)
	}
	return b.view(t, addr, st, str(1), score(2), score(3), score(4), msFloor(b.clock.Now())), nil
}

// Take implements pool.Backend. Only callers waiting in this agent are
// seen: an IP another agent's caller waits for may be taken.
func (b *Backend) Take(ctx context.Context, name, addr string) (bool, error) {
	if b.closed.Load() {
		return false, pool.ErrClosed
	}
	if b.down.Load() {
		return false, errDown
	}
	t := b.target(name)
	t.mu.Lock()
	waiting := len(t.queue)+len(t.batch) > 0
	t.mu.Unlock()
	if waiting {
		return false, nil
	}
	b.outstanding.Add(1)
	defer b.release(1)
	now := msFloor(b.clock.Now())
	tok := b.token()
	res, err := b.run(context.WithoutCancel(ctx), t, takeScript, now, addr, tok, now+b.opts.LeaseTTL.Milliseconds())
	if err != nil {
		return false, err
	}
	switch n, _ := res.(int64); n {
	case -1:
		return false, fmt.Errorf("%w: %s", pool.ErrUnknownIP, addr)
	case 1:
		return len(b.hold(t, []string{addr}, tok)) == 1, nil
	}
	return false, nil
}

// Hold implements pool.Backend.
func (b *Backend) Hold(ctx context.Context, name, addr string, until time.Time) (bool, error) {
	res, err := b.run(context.WithoutCancel(ctx), b.target(name), holdScript, addr, msCeil(until))
	if err != nil {
		return false, err
	}
	switch n, _ := res.(int64); n {
	case -1:
		return false, fmt.Errorf("%w: %s", pool.ErrUnknownIP, addr)
	case 2:
		return true, nil
	}
	return false, nil
}

// Unquarantine implements pool.Backend. The IP is leased to this agent
// until pushed back.
func (b *Backend) Unquarantine(ctx context.Context, name, addr string) (bool, error) {
	b.outstanding.Add(1)
	defer b.release(1)
	t := b.target(name)
	now := msFloor(b.clock.Now())
	tok := b.token()
	res, err := b.run(context.WithoutCancel(ctx), t, unquarantineScript, addr, now, tok, now+b.opts.LeaseTTL.Milliseconds())
	if err != nil {
		return false, err
	}
	switch n, _ := res.(int64); n {
	case -1:
		return false, fmt.Errorf("%w: %s", pool.ErrUnknownIP, addr)
	case 0:
		return false, fmt.Errorf("%w: %s", pool.ErrNotQuarantined, addr)
	case 2:
		return true, nil
	}
	// Still held here under a lease it lost (see hold): its holder returns it.
	return len(b.hold(t, []string{addr}, tok)) == 0, nil
}

// WatchExpiry implements pool.ExpiryWatcher: f is called every LeaseTTL/3
// and when Redis is back after an outage, so that a pool learns of
// quarantines other agents made (and may not live to release).
func (b *Backend) WatchExpiry(name string, f func()) (stop func()) {
	w := &watcher{f: f}
	b.wmu.Lock()
	b.watchers[name] = append(b.watchers[name], w)
	b.wmu.Unlock()
	return func() {
		b.wmu.Lock()
		defer b.wmu.Unlock()
		ws := b.watchers[name]
		if i := slices.Index(ws, w); i >= 0 {
			b.watchers[name] = slices.Delete(ws, i, i+1)
		}
	}
}

func (b *Backend) notifyWatchers() {
	b.wmu.Lock()
	var fs []func()
	for _, ws := range b.watchers {
		for _, w := range ws {
			fs = append(fs, w.f)
		}
	}
	b.wmu.Unlock()
	for _, f := range fs {
		if b.down.Load() || b.finished() {
			return
		}
		f()
	}
}

// Close implements pool.Backend: blocked callers get pool.ErrClosed and
// later Pops fail at once. Returns are still taken: the connection stays
// open (and leases renewed) until every IP handed out is back, or
// DrainTimeout has passed.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.failWaiters(pool.ErrClosed)
	if b.outstanding.Load() <= 0 {
		b.finish()
		return nil
	}
	time.AfterFunc(b.opts.DrainTimeout, b.finish)
	return nil
}

func (b *Backend) finished() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// finish stops the maintenance loop and closes the connection.
func (b *Backend) finish() {
	b.finishOnce.Do(func() {
		close(b.stop)
		b.cancel()
		_ = b.client.Close()
	})
}
