package demo

import (
	"slices"
	"sync"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// Roles of the demo's upstream proxies.
const (
	roleHealthy = "healthy"
	roleDead    = "dead"
	role429     = "429"
	roleSlow    = "slow"
)

// ipStats is what the demo knows of one upstream IP.
type ipStats struct {
	Addr, Role string

	// From proxy.Hooks.Attempt.
	Attempts, Failures int
	Reasons            map[string]int  // failure reason → count
	LastReason         string          // most recent failure reason
	okDurations        []time.Duration // successful attempts

	// From the pool snapshot.
	State       pool.State
	Until       time.Time
	Quarantines int             // times seen entering quarantine
	Releases    int             // times seen leaving it
	QuarantAt   []time.Duration // since start, when it entered quarantine
}

// OK is the number of successful attempts.
func (s *ipStats) OK() int { return s.Attempts - s.Failures }

// P50 is the median duration of successful attempts, or -1 without any.
func (s *ipStats) P50() time.Duration { return percentile(s.okDurations, 0.5) }

// collector gathers the per-IP, per-request and client-side numbers. It
// is fed by the agent's hooks (which must not block: one short lock), by
// the pool poller and by the clients.
type collector struct {
	mu     sync.Mutex
	start  time.Time
	ips    []*ipStats
	byAddr map[string]*ipStats

	// Agent side (proxy.Hooks.Request).
	agentRequests  int
	retries        int
	retriedReqs    int // requests that needed more than one attempt
	agentStatuses  map[int]int
	agentQueueWait []time.Duration

	// Client side.
	responses     int
	successes     int // 200 with an origin body
	statuses      map[int]int
	clientErrors  int
	errorSamples  []string
	canceled      int // cut by the end of the demo
	clientLatency []time.Duration
	waiting       int // callers blocked for an IP at the last poll

	history []point // responses over time, for the live rate
}

type point struct {
	t time.Time
	n int
}

func newCollector(start time.Time, addrs, roles []string) *collector {
	c := &collector{start: start, byAddr: map[string]*ipStats{}, agentStatuses: map[int]int{}, statuses: map[int]int{}}
	for i, a := range addrs {
		s := &ipStats{Addr: a, Role: roles[i], Reasons: map[string]int{}, State: pool.StateAvailable}
		c.ips = append(c.ips, s)
		c.byAddr[a] = s
	}
	return c
}

// hooks are the agent hooks feeding c.
func (c *collector) hooks() proxy.Hooks {
	return proxy.Hooks{Attempt: c.attempt, Request: c.request}
}

func (c *collector) attempt(ev proxy.AttemptEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.byAddr[ev.Addr]
	if s == nil {
		return
	}
	s.Attempts++
	if ev.OK {
		s.okDurations = append(s.okDurations, ev.Duration)
		return
	}
	s.Failures++
	reason := ev.Reason
	if reason == "" {
		reason = "failed"
	}
	s.Reasons[reason]++
	s.LastReason = reason
}

func (c *collector) request(ev proxy.RequestEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.agentRequests++
	c.retries += ev.Retries
	if ev.Retries > 0 {
		c.retriedReqs++
	}
	c.agentStatuses[ev.Status]++
	c.agentQueueWait = append(c.agentQueueWait, ev.QueueWait)
}

// response records one answer a client got; ok means 200 with an origin body.
func (c *collector) response(status int, ok bool, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.responses++
	c.statuses[status]++
	if ok {
		c.successes++
	}
	c.clientLatency = append(c.clientLatency, d)
}

func (c *collector) clientError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clientErrors++
	if len(c.errorSamples) < 5 {
		c.errorSamples = append(c.errorSamples, err.Error())
	}
}

// agentSeen is the number of requests the agent has finished.
func (c *collector) agentSeen() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(c.agentRequests)
}

func (c *collector) cancel() {
	c.mu.Lock()
	c.canceled++
	c.mu.Unlock()
}

// poolState folds a pool snapshot in, counting quarantine transitions.
func (c *collector) poolState(now time.Time, states []pool.IPState, waiting int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiting = waiting
	for _, st := range states {
		s := c.byAddr[st.Addr]
		if s == nil {
			continue
		}
		was := s.State == pool.StateQuarantined
		is := st.State == pool.StateQuarantined
		switch {
		case is && !was:
			s.Quarantines++
			s.QuarantAt = append(s.QuarantAt, now.Sub(c.start))
		case was && !is:
			s.Releases++
		}
		s.State, s.Until = st.State, st.Until
	}
}

// mark notes the response count at t, for the live rate.
func (c *collector) mark(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.history = append(c.history, point{t, c.responses})
}

// rate is responses per second over about the last window.
func (c *collector) rate(window time.Duration) float64 {
	if len(c.history) < 2 {
		return 0
	}
	last := c.history[len(c.history)-1]
	first := c.history[0]
	for _, p := range slices.Backward(c.history) {
		if last.t.Sub(p.t) >= window {
			first = p
			break
		}
	}
	dt := last.t.Sub(first.t).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(last.n-first.n) / dt
}

// percentile returns the q-quantile of ds (nearest rank), -1 when empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}
