package admin

import (
	"sync"
	"time"

	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// rateWindow is how far back the status page's request rate and recent
// outcome mix look, one bucket per second.
const rateWindow = 60

// DefaultMaxEvents is how many quarantine events a Recorder keeps.
const DefaultMaxEvents = 100

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
}

// IPCounts are the attempts sent through one IP of a target since start.
type IPCounts struct {
	Requests uint64    // attempts through the IP
	Failed   uint64    // of which counted against it
	LastUsed time.Time // end of the last attempt
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
	return &Recorder{now: now, ips: map[ipKey]*IPCounts{}, total: map[string]uint64{}, events: make([]Event, 0, maxEvents)}
}

// Attempt counts one use of an IP (a proxy.Hooks Attempt hook).
func (r *Recorder) Attempt(ev proxy.AttemptEvent) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	k := ipKey{ev.Target, ev.Addr}
	c := r.ips[k]
	if c == nil {
		c = &IPCounts{}
		r.ips[k] = c
	}
	c.Requests++
	if !ev.OK {
		c.Failed++
	}
	c.LastUsed = now
}

// Request counts one finished client request (a proxy.Hooks Request hook).
func (r *Recorder) Request(ev proxy.RequestEvent) {
	now := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := &r.buckets[now%rateWindow]
	if b.at != now {
		*b = second{at: now, outcomes: map[string]int{}}
	}
	b.n++
	b.outcomes[ev.Outcome]++
	r.total[ev.Outcome]++
	r.requests++
}

// Quarantined records that addr of target is out until the given time.
func (r *Recorder) Quarantined(target, addr string, until time.Time) {
	r.add(Event{Time: r.now(), Kind: EventQuarantined, Target: target, Address: PublicAddr(addr), Until: until})
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
