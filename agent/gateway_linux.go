package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/metrics"
)

// gateway is the running gateway mode: the BPF objects, the TC
// attachments, the policy routing and the IP_TRANSPARENT listener.
type gateway struct {
	log     *slog.Logger
	objs    *bpf.Gateway
	closers []io.Closer    // in setup order; closed in reverse
	lns     []net.Listener // IPv4, then IPv6 when the host has it
	wg      sync.WaitGroup
	drained bool

	// The exclusions that are not upstream proxies (configured, own
	// addresses) and the upstream proxies' prefixes excluded now; mu
	// guards them and closed against a reload racing with Close.
	mu     sync.Mutex
	base   map[netip.Prefix]bool
	ups    []netip.Prefix
	closed bool
}

// startGatewayMode sets gateway mode up. On error everything done so far
// is undone.
func (a *Agent) startGatewayMode(ctx context.Context) (_ runningGateway, err error) {
	gc := a.res.Transparent.Gateway
	if err := bpf.ProbeGateway(); err != nil {
		return nil, err
	}
	log := a.log.With("component", "gateway")
	// What a crashed agent left (rule, route, filters, qdiscs it added).
	left, err := bpf.RemoveLeftovers()
	for _, l := range left {
		log.Warn("removed leftover of an earlier agent", "what", l)
	}
	if err != nil {
		return nil, fmt.Errorf("remove leftovers of an earlier agent: %w", err)
	}
	objs, err := bpf.LoadGateway(bpf.GatewayOptions{IPEntries: gc.MaxIPEntries, ClientEntries: gc.MaxClientEntries})
	if err != nil {
		return nil, err
	}
	g := &gateway{log: log, objs: objs}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()

	// IP_TRANSPARENT listeners on loopback; each goes into its slot of
	// ph_gw_listen. Without IPv6 here, IPv6 flows are left alone.
	ln, err := transparentListen(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(gc.Port))))
	if err != nil {
		return nil, fmt.Errorf("listen for gateway connections: %w", err)
	}
	g.lns = append(g.lns, ln)
	port := ln.Addr().(*net.TCPAddr).Port
	if ln6, err := transparentListen(ctx, "tcp6", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		g.lns = append(g.lns, ln6)
	} else {
		log.Warn("no IPv6 listener: IPv6 flows are routed, not intercepted", "err", err)
	}
	for i, ln := range g.lns {
		rc, err := ln.(*net.TCPListener).SyscallConn()
		if err != nil {
			return nil, err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = objs.SetListener(i == 1, int(fd)) }); err != nil {
			return nil, err
		}
		if serr != nil {
			return nil, serr
		}
	}

	cfg := bpf.GatewayConfig{
		Mark:    gc.Mark,
		Include: gc.Include,
		Exclude: slices.Clone(gc.Exclude),
		Sources: gc.Sources,
		Ports:   gc.Ports,
	}
	// Never this host's own addresses (a LAN client talking to the agent
	// or to ssh here) nor the upstream proxies.
	own, err := localPrefixes()
	if err != nil {
		return nil, err
	}
	cfg.Exclude = append(cfg.Exclude, own...)
	g.base = map[netip.Prefix]bool{}
	for _, p := range cfg.Exclude {
		g.base[p] = true
	}
	g.ups = a.upstreamPrefixes(ctx)
	cfg.Exclude = append(cfg.Exclude, g.ups...)
	if err := objs.Configure(cfg); err != nil {
		return nil, err
	}

	pr, err := bpf.PolicyRoute{Mark: gc.Mark, Table: int(gc.Table), Priority: gc.RulePriority}.Install(len(g.lns) > 1)
	if err != nil {
		return nil, err
	}
	g.closers = append(g.closers, pr)
	for _, ifname := range gc.Uplinks {
		for _, x := range []struct {
			prog    *ebpf.Program
			ingress bool
		}{{objs.UpEgress, false}, {objs.UpIngress, true}} {
			att, err := bpf.AttachTC(x.prog, ifname, x.ingress, gc.TCAttach)
			if err != nil {
				return nil, fmt.Errorf("transparent.gateway.uplinks: %w", err)
			}
			g.closers = append(g.closers, att)
		}
	}
	for _, ifname := range gc.Interfaces {
		att, err := bpf.AttachTC(objs.LanIngress, ifname, true, gc.TCAttach)
		if err != nil {
			return nil, fmt.Errorf("transparent.gateway.interfaces: %w", err)
		}
		g.closers = append(g.closers, att)
	}
	for _, ln := range g.lns {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			// The listener's local address is the original destination.
			serveAccepted(ln, a.srv, g.log, "gateway", func(c net.Conn) (netip.AddrPort, error) {
				orig := c.LocalAddr().(*net.TCPAddr).AddrPort()
				return netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port()), nil
			})
		}()
	}
	log.Info("gateway mode on", "listen", port, "ipv6", len(g.lns) > 1, "interfaces", gc.Interfaces, "uplinks", gc.Uplinks,
		"ports", gc.Ports, "table", gc.Table, "mark", fmt.Sprintf("%#x", gc.Mark), "attach", g.attachments())
	return g, nil
}

func (g *gateway) attachments() []string {
	var out []string
	for _, c := range g.closers {
		if s, ok := c.(fmt.Stringer); ok {
			out = append(out, s.String())
		}
	}
	return out
}

// localPrefixes are this network namespace's own addresses.
func localPrefixes() ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list local addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			ip = ip.Unmap()
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	return out, nil
}

// Counters reads the counter maps for the metrics collector.
func (g *gateway) Counters() ([]metrics.IPCounter, []metrics.ClientCounter, error) {
	ips, clients, err := g.objs.Counters()
	if err != nil {
		return nil, nil, err
	}
	out := make([]metrics.IPCounter, len(ips))
	for i, r := range ips {
		out[i] = metrics.IPCounter{IP: r.IP, Direction: r.Direction, Packets: r.Packets, Bytes: r.Bytes}
	}
	cs := make([]metrics.ClientCounter, len(clients))
	for i, r := range clients {
		cs[i] = metrics.ClientCounter{Client: r.Client, Connections: r.Connections}
	}
	return out, cs, nil
}

// refreshGatewayUpstreams re-excludes the upstream proxies' addresses
// from interception after a reload changed them. Caller holds a.reload.mu.
func (a *Agent) refreshGatewayUpstreams(ctx context.Context) {
	if g := a.gw.Load(); g != nil {
		(*g).excludeUpstreams(a.upstreamPrefixes(ctx))
	}
}

// excludeUpstreams makes ups the upstream proxies' prefixes left alone,
// in place of those excluded so far (a reload changed them).
func (g *gateway) excludeUpstreams(ups []netip.Prefix) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	keep := map[netip.Prefix]bool{}
	for _, p := range ups {
		keep[p] = true
	}
	var del []netip.Prefix
	for _, p := range g.ups {
		if !keep[p] && !g.base[p] {
			del = append(del, p)
		}
	}
	if err := g.objs.UpdateExclude(ups, del); err != nil {
		g.log.Error("update the upstream exclusions after a reload", "err", err)
		return
	}
	g.ups = ups
}

// Drain stops taking new flows (they are routed as usual from now on)
// while the flows being served keep reaching their sockets.
func (g *gateway) Drain() {
	if g.drained {
		return
	}
	g.drained = true
	if err := g.objs.Drain(); err != nil {
		g.log.Warn("drain gateway", "err", err)
	}
	for _, ln := range g.lns {
		ln.Close()
	}
	g.wg.Wait()
}

// Close removes everything gateway mode added, in reverse order, and
// releases the BPF objects.
func (g *gateway) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	var errs []error
	for i := len(g.closers) - 1; i >= 0; i-- {
		errs = append(errs, g.closers[i].Close())
	}
	g.closers = nil
	for _, ln := range g.lns {
		ln.Close()
	}
	g.wg.Wait()
	errs = append(errs, g.objs.Close())
	return errors.Join(errs...)
}

// transparentListen listens with IP_TRANSPARENT (IPV6_TRANSPARENT for
// tcp6), so that assigned connections to any address are accepted with
// that address as their local one. Not MPTCP: MPTCP sockets cannot go into
// a SOCKMAP.
func transparentListen(ctx context.Context, network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if network == "tcp6" {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			} else {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_TRANSPARENT, 1)
			}
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set IP_TRANSPARENT: %w", serr)
		}
		return nil
	}}
	lc.SetMultipathTCP(false)
	return lc.Listen(ctx, network, addr)
}
