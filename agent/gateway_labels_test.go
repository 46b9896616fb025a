package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/metrics"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

type fakeGateway struct{ ips []metrics.IPCounter }

func (f fakeGateway) Counters() ([]metrics.IPCounter, []metrics.ClientCounter, error) {
	return f.ips, nil, nil
}
func (fakeGateway) Drain()       {}
func (fakeGateway) Close() error { return nil }

func (fakeGateway) ExcludeUpstreams([]netip.Prefix) {}

// The BPF counters' upstream labels follow the routing table in force: a
// reload that moves an IP to another target relabels its counters.
func TestGatewayLabelsFollowTargets(t *testing.T) {
	a := &Agent{cfg: &config.Config{}}
	a.cfg.Transparent.Gateway.Enabled = true
	var g runningGateway = fakeGateway{ips: []metrics.IPCounter{
		{IP: netip.MustParseAddr("198.18.5.1"), Direction: "out", Packets: 2, Bytes: 300},
	}}
	a.gw.Store(&g)
	table := func(ts ...*proxy.Target) { a.live.Store(&ts) }
	table(&proxy.Target{Name: "a", Upstreams: map[string]proxy.Upstream{
		"198.18.5.1:3128": {Addr: "198.18.5.1:3128", Provider: "acme", Region: "eu"},
	}})
	reg := prometheus.NewRegistry()
	if err := a.registerGatewayCollector(reg); err != nil {
		t.Fatal(err)
	}
	check := func(target, provider, region string) {
		t.Helper()
		got, err := testutil.CollectAndFormat(reg, expfmt.TypeTextPlain, "proxy_hopper_bpf_ip_packets_total")
		if err != nil {
			t.Fatal(err)
		}
		line := `proxy_hopper_bpf_ip_packets_total{direction="out",ip="198.18.5.1",provider="` + provider +
			`",region="` + region + `",target="` + target + `"} 2`
		if !strings.Contains(string(got), line) {
			t.Errorf("got\n%s\nwant a line %s", got, line)
		}
	}
	check("a", "acme", "eu")
	// A reload: the IP now belongs to targets b and c, with no provider.
	table(
		&proxy.Target{Name: "c", Upstreams: map[string]proxy.Upstream{"198.18.5.1:3128": {Addr: "198.18.5.1:3128"}}},
		&proxy.Target{Name: "b", Upstreams: map[string]proxy.Upstream{"198.18.5.1:3128": {Addr: "198.18.5.1:3128"}}},
	)
	check("b,c", "", "")
}
