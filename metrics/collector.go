package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// PoolCollector reads every target's pool when scraped: IP counts by
// state, consecutive failures per IP and the requests of this agent
// waiting for an IP (queue depth, whatever the backend, as proxy-hopper
// counts its own queue). Nothing is polled between scrapes.
type PoolCollector struct {
	targets func() []*proxy.Target
	timeout time.Duration

	available, quarantined, ips, failures, depth *prometheus.Desc
}

var _ prometheus.Collector = (*PoolCollector)(nil)

// States lists the pool states in the order the ips gauge reports them.
var States = []pool.State{pool.StateAvailable, pool.StateInUse, pool.StateCooling, pool.StateQuarantined}

// NewPoolCollector reads the pools of the targets returned by targets at
// each scrape. Each snapshot is given timeout (5s when 0).
func NewPoolCollector(targets func() []*proxy.Target, timeout time.Duration) *PoolCollector {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
	return &PoolCollector{
		targets: targets,
		timeout: timeout,
		available: prometheus.NewDesc(name("available_ips"),
			"IPs ready to be handed out now.", []string{"target"}, nil),
		quarantined: prometheus.NewDesc(name("quarantined_ips"),
			"IPs held out of the pool by quarantine.", []string{"target"}, nil),
		ips: prometheus.NewDesc(name("ips"),
			"IPs of the pool by state: available, in-use, cooling, quarantined.", []string{"target", "state"}, nil),
		failures: prometheus.NewDesc(name("ip_failure_count"),
			"Consecutive failures of an IP (0 after a success).", []string{"target", "address", "provider", "region"}, nil),
		depth: prometheus.NewDesc(name("queue_depth"),
			"Requests of this agent waiting for an IP of the target now.", []string{"target"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.available
	ch <- c.quarantined
	ch <- c.ips
	ch <- c.failures
	ch <- c.depth
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.targets() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		snap, err := t.Pool.Snapshot(ctx)
		cancel()
		if err != nil {
			err = fmt.Errorf("snapshot pool of target %s: %w", t.Name, err)
			ch <- prometheus.NewInvalidMetric(c.available, err)
			continue
		}
		var counts [4]int
		for _, ip := range snap {
			for i, s := range States {
				if ip.State == s {
					counts[i]++
				}
			}
			u := t.Upstreams[ip.Addr]
			ch <- prometheus.MustNewConstMetric(c.failures, prometheus.GaugeValue, float64(ip.Failures),
				t.Name, ip.Addr, u.Provider, u.Region)
		}
		// Like the other gauges, left out while the pool cannot be read.
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(t.Pool.Waiting()), t.Name)
		ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, float64(counts[0]), t.Name)
		ch <- prometheus.MustNewConstMetric(c.quarantined, prometheus.GaugeValue, float64(counts[3]), t.Name)
		for i, s := range States {
			ch <- prometheus.MustNewConstMetric(c.ips, prometheus.GaugeValue, float64(counts[i]), t.Name, string(s))
		}
	}
}
