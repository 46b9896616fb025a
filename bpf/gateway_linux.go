package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// GatewayConfig is what ph_lan_ingress reads from the ph_gw_* maps.
type GatewayConfig struct {
	Mark    uint32         // set on assigned packets (the policy rule's fwmark)
	Ports   []uint16       // destination ports to intercept; empty means all
	Include []netip.Prefix // when not empty, only these destinations (IPv4 and IPv6)
	Exclude []netip.Prefix // never these (wins over Include)
	Sources []netip.Prefix // when not empty, only clients from these
}

const (
	gwEnabled    = 1 << 0
	gwAllPorts   = 1 << 1
	gwHasInclude = 1 << 2
	gwHasSources = 1 << 3
	gwDrain      = 1 << 4
)

// Counter directions (ph_ip_key.dir), as the metrics name them.
const (
	DirOut    = "out"    // uplink egress, by destination IP
	DirIn     = "in"     // uplink ingress, by source IP
	DirClient = "client" // LAN ingress, by client (source) IP
)

var dirNames = [...]string{DirOut, DirIn, DirClient}

// GatewayOptions size the counter maps.
type GatewayOptions struct {
	IPEntries     uint32 // ph_ip_stats: one entry per (IP, direction); 16384 when 0
	ClientEntries uint32 // ph_client_conns: one entry per LAN client; 16384 when 0
}

// Gateway is gateway mode's programs and maps.
type Gateway struct {
	LanIngress, UpEgress, UpIngress *ebpf.Program

	// The maps (ph_gw_config, ph_ip_stats…), as bpf2go generates them from
	// tc_lan.c, which declares them all.
	gatewayMaps
}

// gatewayMaps are the maps gateway mode's programs share: the generated
// struct, so that a map added to the C programs needs no list here.
type gatewayMaps = tclanMaps

type gwLPMKey = tclanPhGwLpmKey
type gwConfigValue = tclanPhGwConfig

// ProbeGateway checks every kernel feature gateway mode needs and names
// the first one missing.
func ProbeGateway() error {
	return firstMissing([]featureCheck{
		{"program type sched_cls", func() error { return features.HaveProgramType(ebpf.SchedCLS) }},
		{"map type lru_percpu_hash", func() error { return features.HaveMapType(ebpf.LRUCPUHash) }},
		{"map type lpm_trie", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
		{"map type sockmap", func() error { return features.HaveMapType(ebpf.SockMap) }},
		{"helper bpf_skc_lookup_tcp in sched_cls", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkcLookupTcp)
		}},
		{"helper bpf_sk_assign in sched_cls", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkAssign)
		}},
		{"helper bpf_tcp_check_syncookie in sched_cls", func() error {
			return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnTcpCheckSyncookie)
		}},
	})
}

// LoadGateway creates gateway mode's maps and loads its programs against
// them. A verifier rejection comes back as a wrapped *ebpf.VerifierError.
func LoadGateway(opts GatewayOptions) (_ *Gateway, err error) {
	lan, err := loadTclan()
	if err != nil {
		return nil, fmt.Errorf("load tc_lan spec: %w", err)
	}
	g := &Gateway{}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	size := func(v uint32) uint32 {
		if v == 0 {
			return 16384
		}
		return v
	}
	repl := map[string]*ebpf.Map{}
	for _, nm := range generatedMaps(&g.gatewayMaps) {
		name := nm.name
		ms, ok := lan.Maps[name]
		if !ok {
			return nil, fmt.Errorf("create map %s: not in the tc_lan object", name)
		}
		ms = ms.Copy()
		switch name {
		case "ph_ip_stats":
			ms.MaxEntries = size(opts.IPEntries)
		case "ph_client_conns":
			ms.MaxEntries = size(opts.ClientEntries)
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", name, err)
		}
		*nm.m = m
		repl[name] = m
	}
	for _, p := range []struct {
		name string
		load func() (*ebpf.CollectionSpec, error)
		dst  **ebpf.Program
	}{
		{"ph_lan_ingress", loadTclan, &g.LanIngress},
		{"ph_up_egress", loadTcuplink, &g.UpEgress},
		{"ph_up_ingress", loadTcuplink, &g.UpIngress},
	} {
		spec, err := p.load()
		if err != nil {
			return nil, fmt.Errorf("load %s spec: %w", p.name, err)
		}
		r := map[string]*ebpf.Map{}
		for name, ms := range spec.Maps {
			if m, ok := repl[name]; ok {
				r[name] = m
				ms.MaxEntries = m.MaxEntries() // the sizes set above
			}
		}
		// Only the program wanted: the other one of the object stays out.
		for name := range spec.Programs {
			if name != p.name {
				delete(spec.Programs, name)
			}
		}
		if *p.dst, err = newProgram(spec, p.name, r); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Close releases the programs and maps (attachments are released by
// closing them).
func (g *Gateway) Close() error {
	if g == nil {
		return nil
	}
	var errs []error
	for _, p := range []*ebpf.Program{g.LanIngress, g.UpEgress, g.UpIngress} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	for _, nm := range generatedMaps(&g.gatewayMaps) {
		if *nm.m != nil {
			errs = append(errs, (*nm.m).Close())
		}
	}
	return errors.Join(errs...)
}

func gwLPM(p netip.Prefix) gwLPMKey {
	k := lpm(p)
	return gwLPMKey{Prefixlen: k.Prefixlen, Ip: k.Ip}
}

// Configure writes c into the maps; ph_lan_ingress acts on it at once.
// The selection maps are filled before the config value turns it on.
func (g *Gateway) Configure(c GatewayConfig) error {
	if g == nil || g.PhGwConfig == nil {
		return ErrNotLoaded
	}
	for _, p := range c.Ports {
		if err := g.PhGwPorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("put port %d: %w", p, err)
		}
	}
	for _, m := range []struct {
		m  *ebpf.Map
		ps []netip.Prefix
	}{{g.PhGwInclude, c.Include}, {g.PhGwExclude, c.Exclude}, {g.PhGwSources, c.Sources}} {
		for _, p := range m.ps {
			k := gwLPM(p)
			if err := m.m.Put(&k, uint8(1)); err != nil {
				return fmt.Errorf("put cidr %s: %w", p, err)
			}
		}
	}
	v := gwConfigValue{Flags: gwEnabled, Mark: c.Mark}
	if len(c.Ports) == 0 {
		v.Flags |= gwAllPorts
	}
	if len(c.Include) > 0 {
		v.Flags |= gwHasInclude
	}
	if len(c.Sources) > 0 {
		v.Flags |= gwHasSources
	}
	if err := g.PhGwConfig.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("put gateway config: %w", err)
	}
	return nil
}

// UpdateExclude puts the prefixes add into the exclusions and takes the
// prefixes del out (the upstream proxies changed with a reload). The
// config value is left alone: a drained gateway stays drained.
func (g *Gateway) UpdateExclude(add, del []netip.Prefix) error {
	if g == nil || g.PhGwExclude == nil {
		return ErrNotLoaded
	}
	for _, p := range add {
		k := gwLPM(p)
		if err := g.PhGwExclude.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("put cidr %s: %w", p, err)
		}
	}
	for _, p := range del {
		k := gwLPM(p)
		if err := g.PhGwExclude.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete cidr %s: %w", p, err)
		}
	}
	return nil
}

// Drain makes ph_lan_ingress leave new flows alone (they are forwarded
// as usual) while packets of flows the agent already serves still reach
// their sockets.
func (g *Gateway) Drain() error {
	if g == nil || g.PhGwConfig == nil {
		return ErrNotLoaded
	}
	var v gwConfigValue
	if err := g.PhGwConfig.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("read gateway config: %w", err)
	}
	v.Flags |= gwDrain
	if err := g.PhGwConfig.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("put gateway config: %w", err)
	}
	return nil
}

// SetListener puts the agent's listening socket (its file descriptor)
// into the slot ph_lan_ingress assigns new flows of its family to.
func (g *Gateway) SetListener(ipv6 bool, fd int) error {
	if g == nil || g.PhGwListen == nil {
		return ErrNotLoaded
	}
	slot := uint32(0)
	if ipv6 {
		slot = 1
	}
	if err := g.PhGwListen.Put(slot, uint64(fd)); err != nil {
		return fmt.Errorf("put listener into ph_gw_listen[%d]: %w", slot, err)
	}
	return nil
}

// IPCount is one row of ph_ip_stats, summed over CPUs.
type IPCount struct {
	IP        netip.Addr
	Direction string // DirOut, DirIn or DirClient
	Packets   uint64
	Bytes     uint64
}

// ClientCount is one row of ph_client_conns, summed over CPUs.
type ClientCount struct {
	Client      netip.Addr
	Connections uint64
}

// Counters reads the gateway's counter maps.
func (g *Gateway) Counters() ([]IPCount, []ClientCount, error) {
	if g == nil || g.PhIpStats == nil {
		return nil, nil, ErrNotLoaded
	}
	return ReadCounters(g.PhIpStats, g.PhClientConns)
}

// ReadCounters reads ph_ip_stats and ph_client_conns maps (the agent's own,
// or ones found by ID), sorted by IP then direction.
func ReadCounters(ipStats, clientConns *ebpf.Map) ([]IPCount, []ClientCount, error) {
	var ips []IPCount
	var k tclanPhIpKey
	var vs []tclanPhCounter
	it := ipStats.Iterate()
	for it.Next(&k, &vs) {
		if int(k.Dir) >= len(dirNames) {
			continue
		}
		c := IPCount{IP: netip.AddrFrom16(k.Ip).Unmap(), Direction: dirNames[k.Dir]}
		for _, v := range vs {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		ips = append(ips, c)
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("read ph_ip_stats: %w", err)
	}
	var clients []ClientCount
	var ck [16]byte
	var cv []uint64
	it = clientConns.Iterate()
	for it.Next(&ck, &cv) {
		c := ClientCount{Client: netip.AddrFrom16(ck).Unmap()}
		for _, v := range cv {
			c.Connections += v
		}
		clients = append(clients, c)
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("read ph_client_conns: %w", err)
	}
	sort.Slice(ips, func(i, j int) bool {
		if c := ips[i].IP.Compare(ips[j].IP); c != 0 {
			return c < 0
		}
		return ips[i].Direction < ips[j].Direction
	})
	sort.Slice(clients, func(i, j int) bool { return clients[i].Client.Less(clients[j].Client) })
	return ips, clients, nil
}
