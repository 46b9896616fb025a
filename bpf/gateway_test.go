//go:build linux

package bpf

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

func loadGatewayForTest(t *testing.T, opts GatewayOptions) *Gateway {
	t.Helper()
	testenv.RequireRoot(t)
	if err := ProbeGateway(); err != nil {
		t.Fatal(err)
	}
	g, err := LoadGateway(opts)
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// frame builds an Ethernet + IPv4 (or IPv6) + TCP frame with payload n.
func frame(src, dst netip.Addr, dport uint16, flags byte, n int) []byte {
	eth := make([]byte, 14)
	var ip []byte
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	tcp[12] = 5 << 4
	tcp[13] = flags
	if src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+20+n))
		ip[8], ip[9] = 64, 6
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(20+n))
		ip[6], ip[7] = 6, 64
		s, d := src.As16(), dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	out := append(append(eth, ip...), tcp...)
	return append(out, make([]byte, n)...)
}

func run(t *testing.T, p *ebpf.Program, pkt []byte, times int) {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: pkt, Repeat: uint32(times)})
	if err != nil {
		t.Fatal(err)
	}
	if ret != 0 {
		t.Fatalf("program returned %d, want TC_ACT_OK (0)", ret)
	}
}

// The counting programs count every frame exactly (skb->len, which is the
// whole frame) by the right address, for IPv4 and IPv6, and never drop.
func TestGatewayCounters(t *testing.T) {
	g := loadGatewayForTest(t, GatewayOptions{IPEntries: 64, ClientEntries: 8})
	if err := g.Configure(GatewayConfig{Mark: 0x5049, Ports: []uint16{80}}); err != nil {
		t.Fatal(err)
	}
	lan, up := netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.2.10")
	up6, lan6 := netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("2001:db8::2")
	run(t, g.UpEgress, frame(lan, up, 8888, 0x10, 1000), 5)  // 5 × 1054
	run(t, g.UpEgress, frame(lan6, up6, 8888, 0x10, 100), 2) // 2 × 174
	run(t, g.UpIngress, frame(up, lan, 40000, 0x10, 0), 3)   // 3 × 54
	run(t, g.LanIngress, frame(lan, up, 80, 0x02, 0), 4)     // SYN: counted as a connection
	run(t, g.LanIngress, frame(lan, up, 80, 0x12, 10), 1)    // SYN+ACK: not a new connection
	run(t, g.LanIngress, frame(lan6, up6, 443, 0x02, 0), 1)  // IPv6: counted, not intercepted
	ips, clients, err := g.Counters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[IPCount]bool{
		{IP: lan, Direction: DirClient, Packets: 5, Bytes: 4*54 + 64}: true,
		{IP: up, Direction: DirOut, Packets: 5, Bytes: 5 * 1054}:      true,
		{IP: up, Direction: DirIn, Packets: 3, Bytes: 3 * 54}:         true,
		{IP: lan6, Direction: DirClient, Packets: 1, Bytes: 74}:       true,
		{IP: up6, Direction: DirOut, Packets: 2, Bytes: 2 * 174}:      true,
	}
	for _, c := range ips {
		if !want[c] {
			t.Errorf("unexpected row %+v", c)
		}
		delete(want, c)
	}
	for c := range want {
		t.Errorf("missing row %+v", c)
	}
	if len(clients) != 2 || clients[0] != (ClientCount{Client: lan, Connections: 4}) || clients[1] != (ClientCount{Client: lan6, Connections: 1}) {
		t.Errorf("clients = %+v", clients)
	}

	// LRU maps: far more clients than entries never fails, the map stays bounded.
	for i := range 100 {
		run(t, g.LanIngress, frame(netip.AddrFrom4([4]byte{10, 0, byte(i), 1}), up, 80, 0x02, 0), 1)
	}
	if _, clients, err := g.Counters(); err != nil || len(clients) > 8 || len(clients) < 2 {
		t.Errorf("ph_client_conns has %d entries (%v), want 2 to 8", len(clients), err)
	}
}

// TestGatewayMapsFromObjects: gateway mode's maps are named by the
// generated tc_lan struct alone, and every map the uplink object declares
// is among them (LoadGateway hands it exactly these).
func TestGatewayMapsFromObjects(t *testing.T) {
	var names []string
	for _, nm := range generatedMaps(&gatewayMaps{}) {
		names = append(names, nm.name)
	}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){"tclan": loadTclan, "tcuplink": loadTcuplink} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		for m := range spec.Maps {
			if !strings.HasPrefix(m, ".") && !slices.Contains(names, m) {
				t.Errorf("%s declares map %s, not among the gateway maps %v", name, m, names)
			}
		}
	}
	g := loadGatewayForTest(t, GatewayOptions{IPEntries: 7})
	for _, nm := range generatedMaps(&g.gatewayMaps) {
		if *nm.m == nil {
			t.Fatalf("gateway map %s not loaded", nm.name)
		}
		info, err := (*nm.m).Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != nm.name {
			t.Errorf("field for %s holds map %s", nm.name, info.Name)
		}
	}
	if got := g.PhIpStats.MaxEntries(); got != 7 {
		t.Errorf("ph_ip_stats holds %d entries, want the 7 asked for", got)
	}
}
