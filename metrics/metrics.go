// Package metrics holds proxy-hopper's Prometheus metrics: counters and
// histograms fed by the proxy and pool hooks, a collector that reads pool
// state at scrape time, and the /metrics handler. Nothing here registers
// itself globally: every constructor takes the registry to use.
package metrics

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

const namespace = "proxy_hopper"

// UnmatchedTarget is the target label of requests no target matched, as
// proxy-hopper names it.
const UnmatchedTarget = "unmatched"

// Buckets of proxy-hopper's histograms.
var (
	RequestDurationBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	QueueWaitBuckets       = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	ProbeDurationBuckets   = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
)

// Metrics are the metrics updated as events happen. Plug Request and
// Attempt into proxy.Hooks and PoolHooks into each pool.Options; the
// methods are safe for concurrent use and do not block.
type Metrics struct {
	requests     *prometheus.CounterVec   // target, outcome, tag: attempts, as proxy-hopper counts them
	clientReqs   *prometheus.CounterVec   // target, outcome, tag: client requests and tunnels
	attempts     *prometheus.CounterVec   // target, outcome
	duration     *prometheus.HistogramVec // target
	responses    *prometheus.CounterVec   // target, status_code, tag
	retries      *prometheus.CounterVec   // target
	exhaustions  *prometheus.CounterVec   // target
	queueWait    *prometheus.HistogramVec // target
	queueExpired *prometheus.CounterVec   // target
	quarantines  *prometheus.CounterVec   // target, address, provider, region
	rotations    *prometheus.CounterVec   // target, reason
	authFailures *prometheus.CounterVec   // reason
	reloads      *prometheus.CounterVec   // result
	bytes        *prometheus.CounterVec   // target, direction
	connRefused  *prometheus.CounterVec   // reason

	probeSuccess  *prometheus.CounterVec   // address, provider, region
	probeFailure  *prometheus.CounterVec   // address, provider, region, reason
	probeDuration *prometheus.HistogramVec // address, provider, region
	reachable     *prometheus.GaugeVec     // address, provider, region

	tls *tlsMetrics

	status [600]string // status code label values, so hooks do not format them

	opts      Options
	perTarget sync.Map // target name → *targetLabels
}

// New creates the metrics with DefaultOptions and registers them with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	return NewWithOptions(reg, DefaultOptions())
}

// NewWithOptions creates the metrics and registers them with reg.
func NewWithOptions(reg prometheus.Registerer, opts Options) (*Metrics, error) {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	}
	m := &Metrics{
		requests: counter("requests_total",
			"Requests sent through an upstream IP (each attempt, retries included) by target, outcome (success, rate_limited, server_error, connection_error, error) and tag, plus requests no target matched (target unmatched, outcome no_match).", "target", "outcome", "tag"),
		clientReqs: counter("client_requests_total",
			"Client requests and tunnels by target, final outcome and tag.", "target", "outcome", "tag"),
		attempts: counter("attempts_total",
			"Uses of an upstream IP (retries included) by target and outcome.", "target", "outcome"),
		duration: histogram("request_duration_seconds",
			"Time of each HTTP request attempt through an upstream IP (queue wait excluded; tunnels left out); requests no target matched count as 0 under target unmatched.", RequestDurationBuckets, "target"),
		responses: counter("responses_total",
			"Responses returned to clients of a target after its pool was asked for an IP, by target, HTTP status code and tag.", "target", "status_code", "tag"),
		retries: counter("retries_total",
			"Retry attempts (each further IP tried counts as one).", "target"),
		exhaustions: counter("retry_exhaustions_total",
			"Requests whose last allowed attempt failed and whose error went to the client.", "target"),
		queueWait: histogram("queue_wait_seconds",
			"Time a request (or a retry of it) waited for a free IP, once per IP it got.", QueueWaitBuckets, "target"),
		queueExpired: counter("queue_expired_total",
			"Waits for an IP (a request's or a retry's) that ended after maxQueueWait without one.", "target"),
		quarantines: counter("ip_quarantine_events_total",
			"Times an IP was quarantined.", "target", "address", "provider", "region"),
		rotations: counter("identity_rotations_total",
			"Identities replaced, by target and reason (quarantine, 429, requests).", "target", "reason"),
		authFailures: counter("auth_failures_total",
			"Requests refused by authentication or target ACLs, by reason (missing, invalid, expired, forbidden, no_proxy_access, source_not_allowed).", "reason"),
		reloads: counter("config_reloads_total",
			"Config reloads (SIGHUP or a watched file change), by result: success (applied) or failure (rejected, the running config stays).", "result"),
		bytes: counter("bytes_total",
			"Payload bytes (bodies and tunnel data, heads excluded) moved for clients, by target and direction: up (client towards origin) or down (origin towards client).", "target", "direction"),
		probeSuccess: counter("probe_success_total",
			"Successful background probes of an IP.", "address", "provider", "region"),
		probeFailure: counter("probe_failure_total",
			"Failed background probes of an IP, by reason.", "address", "provider", "region", "reason"),
		probeDuration: histogram("probe_duration_seconds",
			"Duration of background probes, failed ones included.", ProbeDurationBuckets, "address", "provider", "region"),
		reachable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "ip_reachable",
			Help: "Whether the IP passed its last background probe (1) or not (0)."}, []string{"address", "provider", "region"}),
		tls:  newTLSMetrics(),
		opts: opts,
	}
	m.connRefused = counter("connections_refused_total",
		"Client connections reset at accept because a connection limit was reached, by reason: global_limit (server.maxConnections) or client_limit (server.maxConnectionsPerClient).", "reason")
	m.connRefused.WithLabelValues(proxy.RefusedGlobalLimit)
	m.connRefused.WithLabelValues(proxy.RefusedClientLimit)
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	for i := range m.status {
		m.status[i] = strconv.Itoa(i)
	}
	for _, c := range []prometheus.Collector{
		newBuildInfo(opts.Version), m.requests, m.clientReqs, m.attempts, m.duration, m.responses, m.retries, m.exhaustions, m.queueWait,
		m.queueExpired, m.quarantines, m.rotations, m.authFailures, m.reloads, m.bytes, m.probeSuccess, m.probeFailure, m.probeDuration, m.reachable,
		m.connRefused, m.tls.conns, m.tls.failures, m.tls.protos,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ProxyHooks returns the proxy hooks that feed m.
func (m *Metrics) ProxyHooks() proxy.Hooks {
	return proxy.Hooks{Acquire: m.Acquire, Attempt: m.Attempt, Request: m.Request, TLS: m.TLS}
}

// Request records one finished client request or tunnel. Admitted
// requests (a target matched, auth let them through) keep their tag, at
// most Options.TagLimit distinct ones per target, and so do requests no
// target matched (after auth, as proxy-hopper tags them), at most
// Options.TagLimit under target "unmatched"; see labels.go.
func (m *Metrics) Request(ev proxy.RequestEvent) {
	target := ev.Target
	var labels *targetLabels
	tag := ""
	switch {
	case ev.Outcome == proxy.OutcomeNoMatch:
		target = UnmatchedTarget
		tag = m.labelsOf(UnmatchedTarget).tag(proxy.CleanTag(ev.Tag), m.opts.TagLimit)
	case ev.Target != "":
		labels = m.labelsOf(ev.Target)
		if ev.AuthReason == "" {
			tag = labels.tag(proxy.CleanTag(ev.Tag), m.opts.TagLimit)
		}
	}
	m.clientReqs.WithLabelValues(target, ev.Outcome, tag).Inc()
	if ev.Outcome == proxy.OutcomeNoMatch {
		// proxy-hopper counts a request no target matched as one
		// "request", of no duration.
		m.requests.WithLabelValues(UnmatchedTarget, proxy.OutcomeNoMatch, tag).Inc()
		m.duration.WithLabelValues(UnmatchedTarget).Observe(0)
	}
	if ev.AuthReason != "" {
		m.authFailures.WithLabelValues(ev.AuthReason).Inc()
	}
	if ev.Target == "" {
		return // refused before a target was chosen
	}
	if ev.Status > 0 && ev.Status < len(m.status) && pooled(ev.Outcome) {
		m.responses.WithLabelValues(ev.Target, m.statusLabel(labels, ev.Status), tag).Inc()
	}
	if ev.Retries > 0 {
		m.retries.WithLabelValues(ev.Target).Add(float64(ev.Retries))
	}
	if ev.BytesUp > 0 {
		m.bytes.WithLabelValues(ev.Target, "up").Add(float64(ev.BytesUp))
	}
	if ev.BytesDown > 0 {
		m.bytes.WithLabelValues(ev.Target, "down").Add(float64(ev.BytesDown))
	}
	if exhausted(ev) {
		m.exhaustions.WithLabelValues(ev.Target).Inc()
	}
}

// Acquire records one wait for an IP, as proxy-hopper does each time a
// request (or a retry of it) is dispatched: queue_wait_seconds when it got
// one, queue_expired_total when maxQueueWait passed without one (a retry's
// too). A full queue, a closed pool or an unreachable backend is neither.
func (m *Metrics) Acquire(ev proxy.AcquireEvent) {
	switch {
	case ev.Err == nil:
		m.queueWait.WithLabelValues(ev.Target).Observe(ev.Wait.Seconds())
	case errors.Is(ev.Err, pool.ErrNoIP):
		m.queueExpired.WithLabelValues(ev.Target).Inc()
	}
}

// pooled reports the outcomes of requests that got as far as asking the
// target's pool for an IP: proxy-hopper's responses_total counts only
// their answers, not refusals (auth, ACL, destination, client limit, a
// broken request) that come before.
func pooled(outcome string) bool {
	switch outcome {
	case proxy.OutcomeSuccess, proxy.OutcomeRateLimited, proxy.OutcomeServerError,
		proxy.OutcomeConnectionError, proxy.OutcomeNoIP, proxy.OutcomeQueueFull:
		return true
	}
	return false
}

// exhausted reports a request answered with the failure of its last
// allowed attempt: the proxy retries every failed attempt it can. A
// request whose retry found no IP in time did not use up its retries
// (proxy-hopper counts it in queue_expired_total only).
func exhausted(ev proxy.RequestEvent) bool {
	if ev.RetryNoIP {
		return false
	}
	switch ev.Outcome {
	case proxy.OutcomeConnectionError:
		return true
	case proxy.OutcomeRateLimited, proxy.OutcomeServerError:
		switch ev.Status {
		case 429, 502, 503, 504:
			return true
		}
	}
	return false
}

// Attempt records one use of an upstream IP: attempts_total, and as
// proxy-hopper records each attempt, requests_total with the request's
// tag (bounded per target like the client requests' tags) and
// request_duration_seconds with the attempt's time. A tunnel's attempts
// count in requests_total, but their time is the tunnel's lifetime (or
// its failed opening), not a request latency: not observed.
func (m *Metrics) Attempt(ev proxy.AttemptEvent) {
	m.attempts.WithLabelValues(ev.Target, AttemptOutcome(ev)).Inc()
	tag := m.labelsOf(ev.Target).tag(proxy.CleanTag(ev.Tag), m.opts.TagLimit)
	m.requests.WithLabelValues(ev.Target, RequestOutcome(ev), tag).Inc()
	if !ev.Tunnel() {
		m.duration.WithLabelValues(ev.Target).Observe(ev.Duration.Seconds())
	}
}

// Outcomes proxy-hopper gives an attempt besides the request outcomes.
const (
	// OutcomeError: the attempt broke on the agent's side (the client's
	// body, a local resource), not the upstream's.
	OutcomeError = "error"
)

// RequestOutcome classifies one attempt as proxy-hopper's requests_total
// does: rate_limited for a 429, server_error for 502, 503 and 504 (the
// statuses it retries; a 500 is a success), connection_error when the
// upstream proxy or the origin failed before or while answering, error
// when the agent's side broke it, else success.
func RequestOutcome(ev proxy.AttemptEvent) string {
	switch {
	case ev.Reason == "client_body" || ev.Reason == proxy.ReasonLocal:
		return OutcomeError
	case ev.Reason != "" && !strings.HasPrefix(ev.Reason, "status_"), ev.Status == 0:
		return proxy.OutcomeConnectionError
	case ev.Status == 429:
		return proxy.OutcomeRateLimited
	case ev.Status == 502, ev.Status == 503, ev.Status == 504:
		return proxy.OutcomeServerError
	}
	return proxy.OutcomeSuccess
}

// AttemptOutcome classifies one attempt with the request outcomes: the
// origin's status when it answered, connection_error when the upstream
// proxy failed, bad_request when the client's body broke the attempt.
func AttemptOutcome(ev proxy.AttemptEvent) string {
	switch {
	case ev.Reason == "client_body":
		return proxy.OutcomeBadRequest
	case ev.Reason != "" && !strings.HasPrefix(ev.Reason, "status_"), ev.Status == 0:
		return proxy.OutcomeConnectionError
	case ev.Status == 429:
		return proxy.OutcomeRateLimited
	case ev.Status >= 500:
		return proxy.OutcomeServerError
	}
	return proxy.OutcomeSuccess
}

// IPLabels are the provider and region labels of an IP ("" without a provider).
type IPLabels struct {
	Provider, Region string
}

// LabelsOf returns the IP labels of a target's upstreams, by pool address.
func LabelsOf(ups map[string]proxy.Upstream) map[string]IPLabels {
	out := make(map[string]IPLabels, len(ups))
	for addr, u := range ups {
		out[addr] = IPLabels{Provider: u.Provider, Region: u.Region}
	}
	return out
}

// PoolHooks returns the pool hooks of target's pool. The quarantine
// counters of the IPs in labels are created now, at zero, so the first
// quarantine shows in rate(); other IPs get unlabelled provider and region.
func (m *Metrics) PoolHooks(target string, labels map[string]IPLabels) pool.Hooks {
	known := make(map[string]prometheus.Counter, len(labels))
	for addr, l := range labels {
		known[addr] = m.quarantines.WithLabelValues(target, addr, l.Provider, l.Region)
	}
	return pool.Hooks{
		Quarantined: func(addr string, _ time.Time) {
			if c, ok := known[addr]; ok {
				c.Inc()
				return
			}
			m.quarantines.WithLabelValues(target, addr, "", "").Inc()
		},
	}
}

// ConnRefused counts one client connection refused at a limit; reason is
// one of proxy's Refused* constants (proxy.Options.RefusedConn).
func (m *Metrics) ConnRefused(reason string) {
	m.connRefused.WithLabelValues(reason).Inc()
}

// ConfigReload counts one config reload: applied (ok) or rejected.
func (m *Metrics) ConfigReload(ok bool) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
		return
	}
	m.reloads.WithLabelValues("failure").Inc()
}

// IdentityRotated returns the identity.Options.OnRotate callback of
// target's identity store.
func (m *Metrics) IdentityRotated(target string) func(addr, reason string) {
	return func(_, reason string) {
		m.rotations.WithLabelValues(target, reason).Inc()
	}
}

// ProbeResult is one background probe of an IP.
type ProbeResult struct {
	Addr     string
	IPLabels        // of the IP
	OK       bool   // reachable
	Reason   string // on failure: timeout, proxy_unreachable, connection_error, http_error
	Duration time.Duration
}

// Probe records one background probe. Nothing calls it until the prober
// exists; until then the probe metrics have no series.
func (m *Metrics) Probe(r ProbeResult) {
	m.probeDuration.WithLabelValues(r.Addr, r.Provider, r.Region).Observe(r.Duration.Seconds())
	up := m.reachable.WithLabelValues(r.Addr, r.Provider, r.Region)
	if r.OK {
		m.probeSuccess.WithLabelValues(r.Addr, r.Provider, r.Region).Inc()
		up.Set(1)
		return
	}
	m.probeFailure.WithLabelValues(r.Addr, r.Provider, r.Region, r.Reason).Inc()
	up.Set(0)
}

// ForgetIP removes the ip_reachable series of addr, an IP no target uses
// any more (the probe counters stay, as counters do).
func (m *Metrics) ForgetIP(addr string) {
	m.reachable.DeletePartialMatch(prometheus.Labels{"address": addr})
}
