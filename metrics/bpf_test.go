package metrics

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBPFCollector(t *testing.T) {
	ip := netip.MustParseAddr
	var fail error
	src := CounterSourceFunc(func() ([]IPCounter, []ClientCounter, error) {
		if fail != nil {
			return nil, nil, fail
		}
		return []IPCounter{
				{IP: ip("198.18.2.10"), Direction: "out", Packets: 10, Bytes: 15000},
				{IP: ip("198.18.2.10"), Direction: "in", Packets: 7, Bytes: 462},
				{IP: ip("203.0.113.9"), Direction: "out", Packets: 3, Bytes: 200},
				{IP: ip("198.18.1.2"), Direction: "client", Packets: 12, Bytes: 16000},
				{IP: ip("2001:db8::1"), Direction: "out", Packets: 1, Bytes: 90},
			}, []ClientCounter{
				{Client: ip("198.18.1.2"), Connections: 4},
			}, nil
	})
	labels := func(a netip.Addr) (UpstreamLabels, bool) {
		if a == ip("198.18.2.10") || a == ip("198.18.1.2") {
			return UpstreamLabels{Target: "api,web", Provider: "acme", Region: "eu"}, true
		}
		return UpstreamLabels{}, false
	}
	c := NewBPFCollector(src, labels)
	want := `
# HELP proxy_hopper_bpf_client_connections_total New TCP connections (SYN) from each LAN client seen on the gateway's LAN interfaces.
# TYPE proxy_hopper_bpf_client_connections_total counter
proxy_hopper_bpf_client_connections_total{client="198.18.1.2"} 4
# HELP proxy_hopper_bpf_ip_bytes_total Bytes (Ethernet frame length) counted by the gateway's TC programs per IP and direction, as ip_packets_total.
# TYPE proxy_hopper_bpf_ip_bytes_total counter
proxy_hopper_bpf_ip_bytes_total{direction="client",ip="198.18.1.2",provider="",region="",target=""} 16000
proxy_hopper_bpf_ip_bytes_total{direction="in",ip="198.18.2.10",provider="acme",region="eu",target="api,web"} 462
proxy_hopper_bpf_ip_bytes_total{direction="out",ip="198.18.2.10",provider="acme",region="eu",target="api,web"} 15000
proxy_hopper_bpf_ip_bytes_total{direction="out",ip="2001:db8::1",provider="",region="",target=""} 90
proxy_hopper_bpf_ip_bytes_total{direction="out",ip="203.0.113.9",provider="",region="",target=""} 200
# HELP proxy_hopper_bpf_ip_packets_total Packets counted by the gateway's TC programs per IP: direction out (uplink egress, by destination), in (uplink ingress, by source), client (LAN ingress, by client). A GSO packet counts once.
# TYPE proxy_hopper_bpf_ip_packets_total counter
proxy_hopper_bpf_ip_packets_total{direction="client",ip="198.18.1.2",provider="",region="",target=""} 12
proxy_hopper_bpf_ip_packets_total{direction="in",ip="198.18.2.10",provider="acme",region="eu",target="api,web"} 7
proxy_hopper_bpf_ip_packets_total{direction="out",ip="198.18.2.10",provider="acme",region="eu",target="api,web"} 10
proxy_hopper_bpf_ip_packets_total{direction="out",ip="2001:db8::1",provider="",region="",target=""} 1
proxy_hopper_bpf_ip_packets_total{direction="out",ip="203.0.113.9",provider="",region="",target=""} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if probs, err := testutil.CollectAndLint(c); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}

	// A map that cannot be read fails the scrape of this collector only.
	fail = errors.New("read ph_ip_stats: boom")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("gather with a failing source: %v", err)
	}
}
