package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxy-hopper/proxy-hopper/mitm"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// handshakeReasons is the closed set of handshake failure reasons
// (proxy.Handshake*): each is exported from the start at 0.
var handshakeReasons = []string{
	proxy.HandshakeClientRejected, proxy.HandshakeSNIMismatch, proxy.HandshakeBadSNI, proxy.HandshakeNotTLS,
	proxy.HandshakeTimeout, proxy.HandshakeClientClosed, proxy.HandshakeMintError, proxy.HandshakeError,
}

// tlsMetrics count CONNECT and transparent TLS connections by how they
// were handled (intercept.go in proxy).
type tlsMetrics struct {
	conns    *prometheus.CounterVec // target, mode, handling
	failures *prometheus.CounterVec // reason
	protos   *prometheus.CounterVec // proto
}

func newTLSMetrics() *tlsMetrics {
	t := &tlsMetrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "tls_connections_total",
			Help: "CONNECT tunnels and transparent TLS connections by target, mode (connect, transparent) and handling: intercepted (TLS terminated, each request sent on its own), tunnelled (the target does not intercept), bypassed (on interception.bypassDomains/bypassRegex), failed (the client's handshake with the agent failed)."},
			[]string{"target", "mode", "handling"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "tls_handshake_failures_total",
			Help: "Failed TLS handshakes of intercepted clients with the agent, by reason (client_rejected_certificate, sni_mismatch, bad_sni, not_tls, timeout, client_closed, mint_error, handshake_error)."},
			[]string{"reason"}),
		protos: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "tls_intercepted_protocol_total",
			Help: "Intercepted connections by the protocol negotiated with the client (h2, http/1.1)."},
			[]string{"proto"}),
	}
	for _, r := range handshakeReasons {
		t.failures.WithLabelValues(r)
	}
	t.protos.WithLabelValues("h2")
	t.protos.WithLabelValues("http/1.1")
	return t
}

// TLS records one TLS connection's handling (proxy.Hooks.TLS).
func (m *Metrics) TLS(ev proxy.TLSEvent) {
	m.tls.conns.WithLabelValues(ev.Target, ev.Mode, ev.Handling).Inc()
	switch ev.Handling {
	case proxy.TLSFailed:
		m.tls.failures.WithLabelValues(ev.Reason).Inc()
	case proxy.TLSIntercepted:
		m.tls.protos.WithLabelValues(ev.Proto).Inc()
	}
}

// minterCollector exports the interception CA's leaf cache at scrape
// time.
type minterCollector struct {
	stats                                   func() mitm.Stats
	lookups, mints, errs, evicted, mintTime *prometheus.Desc
	size                                    *prometheus.Desc
}

// NewMinterCollector exports the leaf certificate cache of interception
// (hits and misses, leaves signed, time spent signing, evictions, size).
func NewMinterCollector(stats func() mitm.Stats) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
	}
	return &minterCollector{
		stats:    stats,
		lookups:  d("intercept_certificate_lookups_total", "Leaf certificate lookups of intercepted handshakes, by result: hit (cached) or miss (signed, or waited for a signature under way).", "result"),
		mints:    d("intercept_certificates_minted_total", "Leaf certificates signed by the interception CA."),
		errs:     d("intercept_certificate_mint_errors_total", "Leaf certificates that could not be signed."),
		mintTime: d("intercept_certificate_mint_seconds_total", "Time spent signing leaf certificates (divide by intercept_certificates_minted_total for the mean)."),
		evicted:  d("intercept_certificate_evictions_total", "Cached leaf certificates dropped to keep the cache within its bound."),
		size:     d("intercept_certificate_cache_size", "Leaf certificates cached now."),
	}
}

func (c *minterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lookups, c.mints, c.errs, c.mintTime, c.evicted, c.size} {
		ch <- d
	}
}

func (c *minterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(s.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(s.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(c.mints, prometheus.CounterValue, float64(s.Mints))
	ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(s.MintErrors))
	ch <- prometheus.MustNewConstMetric(c.mintTime, prometheus.CounterValue, s.MintTime.Seconds())
	ch <- prometheus.MustNewConstMetric(c.evicted, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(s.Size))
}
