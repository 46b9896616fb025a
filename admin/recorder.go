package admin

import (
	"slices"
	"sync"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// rateWindow is how far back the status page's request rate and recent
// outcome mix look, one bucket per second.
const rateWindow = 60

// DefaultMaxEvents is how many quarantine events a Recorder keeps.
const DefaultMaxEvents = 100

// Bounds of what a Recorder keeps beyond the events.
const (
	// maxIPs bounds the IPs whose counts are kept; when full, the one
	// used least recently goes.
	maxIPs = 20_000
	// maxTargets bounds the targets whose request stats are kept.
	maxTargets = 1_000
	// latencySamples is how many of a target's latest requests its
	// median and p95 are taken from (those within the rate window).
	latencySamples = 1024
)

// Event kinds.
const (
	EventQuarantined = "quarantined"
	EventReleased    = "released"
)

// Event is one quarantine transition of an IP.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // quarantined, released
	Target  string    `json:"target"`
	Address string    `json:"address"`
	// Until is when a quarantined IP is due back (zero for released).
	Until time.Time `json:"until,omitzero"`
	// Reason says why an IP was quarantined: the failed attempt's reason
	// (status_429, connect_refused, connect_timeout, status_503, ...),
	// probe_<reason> for the prober, admin for the admin API; empty
	// when not known. At most pool.MaxCauseLen bytes.
	Reason string `json:"reason,omitempty"`
	// ReasonText describes Reason for people (quarantined only).
	ReasonText string `json:"reasonText,omitempty"`
}

// IPCounts are the attempts sent through one IP of a target since start,
// and its last quarantine.
type IPCounts struct {
	Requests uint64    // attempts through the IP
	Failed   uint64    // of which counted against it
	LastUsed time.Time // end of the last attempt
	// QuarantineReason and QuarantinedAt are of the IP's last quarantine
	// by this agent (Event.Reason).
	QuarantineReason string
	QuarantinedAt    time.Time
}

// TargetTraffic is one target's client requests over the rate window.
type TargetTraffic struct {
	// Requests finished within the window, and their rate per second.
	Requests int     `json:"requests"`
	Rate     float64 `json:"rate"`
	// P50Ms and P95Ms are the median and 95th percentile of the request
	// durations (queue wait and retries included), taken from the latest
	// latencySamples requests within the window; 0 without requests.
	P50Ms float64 `json:"p50Ms"`
	P95Ms float64 `json:"p95Ms"`
}

// targetStats is a target's per-second request counts and latest durations.
type targetStats struct {
	seconds [rateWindow]struct {
		at int64
		n  int
	}
	samples [latencySamples]struct {
		at int64 // unix second
		d  time.Duration
	}
	next, n int // ring position and fill of samples
}

// Traffic is the request rate and outcome mix the status page draws.
type Traffic struct {
	// WindowSeconds is the span of Series, Rate and Recent.
	WindowSeconds int `json:"windowSeconds"`
	// Rate is client requests per second over the window.
	Rate float64 `json:"rate"`
	// Series counts requests per second, oldest first, the last entry
	// being the current second.
	Series []int `json:"series"`
	// Recent counts outcomes over the window; Total since start.
	Recent map[string]uint64 `json:"recent"`
	Total  map[string]uint64 `json:"total"`
	// Requests is the number of client requests since start.
	Requests uint64 `json:"requests"`
}

type ipKey struct{ target, addr string }

type second struct {
	at       int64 // unix second this bucket holds
	n        int
	outcomes map[string]int
}

// Recorder keeps what the status page shows beyond pool state: attempts
// per IP, client request rate and outcome mix, and a bounded ring of
// quarantine events. Its methods are the agent's proxy and pool hooks; they
// are cheap and never block on I/O. Safe for concurrent use.
type Recorder struct {
	now func() time.Time

	mu       sync.Mutex
	ips      map[ipKey]*IPCounts
	targets  map[string]*targetStats
	buckets  [rateWindow]second
	total    map[string]uint64
	requests uint64
	events   []Event // ring of cap maxEvents
	next     int     // where the next event goes once full
}

// NewRecorder keeps up to maxEvents events (DefaultMaxEvents when <= 0).
// now is the clock (time.Now when nil).
func NewRecorder(now func() time.Time, maxEvents int) *Recorder {
	if now == nil {
		now = time.Now
	}
	if maxEvents <= 0 {
		maxEvents = DefaultMaxEvents
	}
	return &Recorder{now: now, ips: map[ipKey]*IPCounts{}, targets: map[string]*targetStats{}, total: map[string]uint64{}, events: make([]Event, 0, maxEvents)}
}

// Attempt counts one use of an IP (a proxy.Hooks Attempt hook).
func (r *Recorder) Attempt(ev proxy.AttemptEvent) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.ipLocked(ipKey{ev.Target, ev.Addr})
	c.Requests++
	if !ev.OK {
		c.Failed++
	}
	c.LastUsed = now
}

// ipLocked returns k's counts, making them (and making room) if new.
func (r *Recorder) ipLocked(k ipKey) *IPCounts {
	if c := r.ips[k]; c != nil {
		return c
	}
	if len(r.ips) >= maxIPs {
		var oldest ipKey
		var at time.Time
		first := true
		for k, c := range r.ips {
			if first || c.LastUsed.Before(at) {
				oldest, at, first = k, c.LastUsed, false
			}
		}
		delete(r.ips, oldest)
	}
	c := &IPCounts{}
	r.ips[k] = c
	return c
}

// Request counts one finished client request (a proxy.Hooks Request hook).
func (r *Recorder) Request(ev proxy.RequestEvent) {
	now := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Target != "" {
		r.targetRequest(ev.Target, now, ev.Duration)
	}
	b := &r.buckets[now%rateWindow]
	if b.at != now {
		*b = second{at: now, outcomes: map[string]int{}}
	}
	b.n++
	b.outcomes[ev.Outcome]++
	r.total[ev.Outcome]++
	r.requests++
}

// targetRequest counts a request of target at unix second now.
func (r *Recorder) targetRequest(target string, now int64, d time.Duration) {
	ts := r.targets[target]
	if ts == nil {
		if len(r.targets) >= maxTargets {
			return
		}
		ts = &targetStats{}
		r.targets[target] = ts
	}
	b := &ts.seconds[now%rateWindow]
	if b.at != now {
		b.at, b.n = now, 0
	}
	b.n++
	ts.samples[ts.next].at, ts.samples[ts.next].d = now, d
	ts.next = (ts.next + 1) % latencySamples
	ts.n = min(ts.n+1, latencySamples)
}

// Target returns target's requests, rate and latency over the window.
func (r *Recorder) Target(target string) TargetTraffic {
	now := r.now().Unix()
	from := now - rateWindow + 1
	var tt TargetTraffic
	var ds []time.Duration
	r.mu.Lock()
	if ts := r.targets[target]; ts != nil {
		for _, b := range ts.seconds {
			if b.at >= from && b.at <= now {
				tt.Requests += b.n
			}
		}
		ds = make([]time.Duration, 0, ts.n)
		for _, s := range ts.samples[:ts.n] {
			if s.at >= from && s.at <= now {
				ds = append(ds, s.d)
			}
		}
	}
	r.mu.Unlock()
	tt.Rate = float64(tt.Requests) / rateWindow
	if len(ds) > 0 {
		slices.Sort(ds)
		tt.P50Ms = ms(percentile(ds, 0.50))
		tt.P95Ms = ms(percentile(ds, 0.95))
	}
	return tt
}

// percentile of sorted ds by the nearest-rank method.
func percentile(ds []time.Duration, p float64) time.Duration {
	i := int(float64(len(ds))*p+0.999999) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Quarantined records that addr of target is out until the given time,
// and why (a pool.Hooks QuarantinedWhy hook); the cause is cleaned and
// cut as pool.CleanCause does.
func (r *Recorder) Quarantined(target, addr string, until time.Time, cause string) {
	now := r.now()
	cause = pool.CleanCause(cause)
	r.mu.Lock()
	c := r.ipLocked(ipKey{target, addr})
	c.QuarantineReason, c.QuarantinedAt = cause, now
	r.mu.Unlock()
	r.add(Event{Time: now, Kind: EventQuarantined, Target: target, Address: PublicAddr(addr), Until: until, Reason: cause, ReasonText: reasonText(cause)})
}

// Released records that addr of target is back from quarantine.
func (r *Recorder) Released(target, addr string) {
	r.add(Event{Time: r.now(), Kind: EventReleased, Target: target, Address: PublicAddr(addr)})
}

func (r *Recorder) add(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) < cap(r.events) {
		r.events = append(r.events, e)
		return
	}
	r.events[r.next] = e
	r.next = (r.next + 1) % len(r.events)
}

// IP returns the counts of addr in target.
func (r *Recorder) IP(target, addr string) IPCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.ips[ipKey{target, addr}]; c != nil {
		return *c
	}
	return IPCounts{}
}

// Events returns the kept events, newest first.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Event, 0, len(r.events))
	for i := range r.events {
		// Oldest is at r.next once the ring is full, else at 0.
		out = append(out, r.events[(r.next+i)%len(r.events)])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Traffic returns the rate and outcome mix now.
func (r *Recorder) Traffic() Traffic {
	now := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	t := Traffic{
		WindowSeconds: rateWindow,
		Series:        make([]int, rateWindow),
		Recent:        map[string]uint64{},
		Total:         make(map[string]uint64, len(r.total)),
		Requests:      r.requests,
	}
	sum := 0
	for i := range rateWindow {
		at := now - rateWindow + 1 + int64(i)
		b := &r.buckets[((at%rateWindow)+rateWindow)%rateWindow]
		if b.at != at {
			continue
		}
		t.Series[i] = b.n
		sum += b.n
		for o, n := range b.outcomes {
			t.Recent[o] += uint64(n)
		}
	}
	for o, n := range r.total {
		t.Total[o] = n
	}
	t.Rate = float64(sum) / rateWindow
	return t
}
