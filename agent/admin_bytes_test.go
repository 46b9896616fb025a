package agent

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/metrics"
)

// failingGateway is a running gateway whose counters cannot be read.
type failingGateway struct{ fakeGateway }

func (failingGateway) Counters() ([]metrics.IPCounter, []metrics.ClientCounter, error) {
	return nil, nil, errors.New("map gone")
}

// TestAdminGatewayBytes: the page's byte counters are the gateway's BPF
// counters per upstream IP, in and out apart (clients left out); none
// without gateway mode; a read error is passed on.
func TestAdminGatewayBytes(t *testing.T) {
	cfg := &config.Config{}
	a := &Agent{cfg: cfg}
	x := &agentAdmin{a: a}
	if x.bytes() != nil {
		t.Fatal("byte counters offered with gateway mode off")
	}
	cfg.Transparent.Gateway.Enabled = true
	read := x.bytes()
	if m, err := read(); err != nil || len(m) != 0 {
		t.Fatalf("gateway configured, not running: %v %v", m, err)
	}
	up, client := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("192.168.1.5")
	var g runningGateway = fakeGateway{ips: []metrics.IPCounter{
		{IP: up, Direction: "out", Bytes: 1000, Packets: 3},
		{IP: up, Direction: "in", Bytes: 5000, Packets: 4},
		{IP: client, Direction: "client", Bytes: 77},
	}}
	a.gw.Store(&g)
	m, err := read()
	if err != nil || len(m) != 1 || m[up] != (admin.ByteCounts{In: 5000, Out: 1000}) {
		t.Fatalf("counters: %v %v", m, err)
	}
	g = failingGateway{}
	a.gw.Store(&g)
	if _, err := read(); err == nil {
		t.Fatal("a counter read error was dropped")
	}
}
