package metrics

import (
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

// IPCounter is the traffic the BPF programs counted for one IP in one
// direction: "out" (uplink egress, by destination), "in" (uplink ingress,
// by source) or "client" (LAN ingress, by client).
type IPCounter struct {
	IP        netip.Addr
	Direction string
	Packets   uint64
	Bytes     uint64
}

// ClientCounter is the new TCP connections one LAN client opened.
type ClientCounter struct {
	Client      netip.Addr
	Connections uint64
}

// CounterSource reads the BPF counter maps (at scrape time).
type CounterSource interface {
	Counters() ([]IPCounter, []ClientCounter, error)
}

// CounterSourceFunc adapts a function to CounterSource.
type CounterSourceFunc func() ([]IPCounter, []ClientCounter, error)

// Counters implements CounterSource.
func (f CounterSourceFunc) Counters() ([]IPCounter, []ClientCounter, error) { return f() }

// UpstreamLabels name the pool an upstream proxy IP belongs to. Target
// lists every target whose pool has the IP, comma-separated.
type UpstreamLabels struct {
	Target, Provider, Region string
}

// BPFCollector exports the gateway's BPF counter maps, read when scraped:
// proxy_hopper_bpf_ip_packets_total and _bytes_total by ip and direction
// (with target, provider and region for upstream proxy IPs) and
// proxy_hopper_bpf_client_connections_total by client.
type BPFCollector struct {
	src    CounterSource
	labels func(netip.Addr) (UpstreamLabels, bool)

	packets, bytes, conns *prometheus.Desc
}

var _ prometheus.Collector = (*BPFCollector)(nil)

// NewBPFCollector reads src at each scrape; labels (may be nil) tells
// which IPs are upstream proxies of a pool.
func NewBPFCollector(src CounterSource, labels func(netip.Addr) (UpstreamLabels, bool)) *BPFCollector {
	name := func(n string) string { return prometheus.BuildFQName(namespace, "bpf", n) }
	ipLabels := []string{"ip", "direction", "target", "provider", "region"}
	return &BPFCollector{
		src: src, labels: labels,
		packets: prometheus.NewDesc(name("ip_packets_total"),
			"Packets counted by the gateway's TC programs per IP: direction out (uplink egress, by destination), in (uplink ingress, by source), client (LAN ingress, by client). A GSO packet counts once.",
			ipLabels, nil),
		bytes: prometheus.NewDesc(name("ip_bytes_total"),
			"Bytes (Ethernet frame length) counted by the gateway's TC programs per IP and direction, as ip_packets_total.",
			ipLabels, nil),
		conns: prometheus.NewDesc(name("client_connections_total"),
			"New TCP connections (SYN) from each LAN client seen on the gateway's LAN interfaces.",
			[]string{"client"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *BPFCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.conns
}

// Collect implements prometheus.Collector.
func (c *BPFCollector) Collect(ch chan<- prometheus.Metric) {
	ips, clients, err := c.src.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.packets, err)
		return
	}
	for _, r := range ips {
		var l UpstreamLabels
		if c.labels != nil && r.Direction != "client" {
			l, _ = c.labels(r.IP)
		}
		vals := []string{r.IP.String(), r.Direction, l.Target, l.Provider, l.Region}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(r.Packets), vals...)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(r.Bytes), vals...)
	}
	for _, r := range clients {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.CounterValue, float64(r.Connections), r.Client.String())
	}
}
