package bpf

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TC attach modes.
const (
	TCAuto   = "auto"   // TCX when the kernel has it, else clsact
	TCX      = "tcx"    // BPF links (kernel ≥ 6.6); gone with the process
	TCClsact = "clsact" // a clsact qdisc and bpf filters through netlink
)

// Gateway netlink marks: everything gateway mode adds to the kernel
// carries them, so what a crashed agent left is found and removed, and
// nothing else is ever touched.
const (
	// RouteProtocol is the protocol of the policy rule and the local route.
	RouteProtocol = 0x48
	// FilterPriority is the priority of the bpf filters in clsact mode;
	// their names start with "ph_".
	FilterPriority = 0x4850
	// StateDir records the clsact qdiscs gateway mode created (a qdisc has
	// no mark of its own), per network namespace and interface.
	StateDir = "/run/proxy-hopper"
)

// TCAttachment is one program attached to an interface's ingress or
// egress, by a TCX link or a clsact filter.
type TCAttachment struct {
	desc  string
	link  link.Link       // TCX
	nl    *netlink.Handle // clsact
	filt  *netlink.BpfFilter
	qdisc *netlink.GenericQdisc // created by us, removed with the last filter
	state string                // the marker file of qdisc
}

func (a *TCAttachment) String() string { return a.desc }

// Close detaches the program (and removes the clsact qdisc when this
// attachment created it and no other filter is left on it).
func (a *TCAttachment) Close() error {
	if a.link != nil {
		return a.link.Close()
	}
	defer a.nl.Close()
	var errs []error
	if err := a.nl.FilterDel(a.filt); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("delete filter %s: %w", a.desc, err))
	}
	if a.qdisc != nil {
		errs = append(errs, removeOurClsact(a.nl, a.qdisc.LinkIndex, a.state))
	}
	return errors.Join(errs...)
}

// AttachTC attaches prog to the ingress (or egress) of the interface named
// ifname, in this thread's network namespace, as mode says.
func AttachTC(prog *ebpf.Program, ifname string, ingress bool, mode string) (*TCAttachment, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	dir := "egress"
	at := ebpf.AttachTCXEgress
	if ingress {
		dir, at = "ingress", ebpf.AttachTCXIngress
	}
	name := progName(prog)
	desc := fmt.Sprintf("%s on %s %s", name, ifname, dir)
	if mode == TCAuto || mode == TCX || mode == "" {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: prog, Attach: at})
		if err == nil {
			return &TCAttachment{desc: desc + " (tcx)", link: l}, nil
		}
		if mode == TCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return nil, fmt.Errorf("attach %s (tcx): %w", desc, err)
		}
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	a := &TCAttachment{desc: desc + " (clsact)", nl: nl}
	q, state, err := ensureClsact(nl, ifc.Index, ifname)
	if err != nil {
		nl.Close()
		return nil, err
	}
	a.qdisc, a.state = q, state
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	a.filt = &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifc.Index, Parent: parent, Handle: 1,
			Protocol: unix.ETH_P_ALL, Priority: FilterPriority},
		Fd: prog.FD(), Name: name, DirectAction: true,
	}
	if err := nl.FilterAdd(a.filt); err != nil {
		if a.qdisc != nil {
			_ = removeOurClsact(nl, ifc.Index, state)
		}
		nl.Close()
		return nil, fmt.Errorf("attach %s (clsact filter): %w", desc, err)
	}
	return a, nil
}

func progName(p *ebpf.Program) string {
	if info, err := p.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return "ph_prog"
}

// netnsID names this thread's network namespace (its inode) in marker files.
func netnsID() string {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "unknown"
	}
	return fmt.Sprint(st.Ino)
}

func clsactState(ifname string) string {
	return filepath.Join(StateDir, fmt.Sprintf("clsact-net%s-%s", netnsID(), ifname))
}

// ensureClsact adds a clsact qdisc to the interface unless it has one; it
// returns the qdisc (and its marker file) only when it added it.
func ensureClsact(nl *netlink.Handle, ifindex int, ifname string) (*netlink.GenericQdisc, string, error) {
	l, err := nl.LinkByIndex(ifindex)
	if err != nil {
		return nil, "", fmt.Errorf("interface %s: %w", ifname, err)
	}
	qs, err := nl.QdiscList(l)
	if err != nil {
		return nil, "", fmt.Errorf("list qdiscs of %s: %w", ifname, err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return nil, "", nil
		}
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0),
		Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	state := clsactState(ifname)
	if err := os.MkdirAll(StateDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("record clsact qdisc: %w", err)
	}
	if err := os.WriteFile(state, []byte(ifname+"\n"), 0o600); err != nil {
		return nil, "", fmt.Errorf("record clsact qdisc: %w", err)
	}
	if err := nl.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		os.Remove(state)
		return nil, "", fmt.Errorf("add clsact qdisc to %s: %w", ifname, err)
	}
	return q, state, nil
}

// removeOurClsact removes the clsact qdisc of ifindex that gateway mode
// added (its marker file says so) once no filter is left on it.
func removeOurClsact(nl *netlink.Handle, ifindex int, state string) error {
	l, err := nl.LinkByIndex(ifindex)
	if err != nil {
		os.Remove(state)
		return nil // the interface is gone, and its qdisc with it
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := nl.FilterList(l, parent)
		if err != nil {
			return fmt.Errorf("list filters of %s: %w", l.Attrs().Name, err)
		}
		if len(fs) > 0 {
			return nil // someone else's filter, or our other direction
		}
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0),
		Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := nl.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc of %s: %w", l.Attrs().Name, err)
	}
	if err := os.Remove(state); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// PolicyRoute is the policy routing gateway mode needs in this network
// namespace: packets with Mark go to Table, whose only route is
// `local 0.0.0.0/0 dev lo` (and `local ::/0 dev lo`). Rules and routes
// carry RouteProtocol.
type PolicyRoute struct {
	Mark     uint32
	Table    int
	Priority int
}

func (p PolicyRoute) rule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Mark = p.Mark
	mask := uint32(0xffffffff)
	r.Mask = &mask
	r.Table = p.Table
	r.Priority = p.Priority
	r.Protocol = RouteProtocol
	return r
}

func (p PolicyRoute) route(family, lo int) *netlink.Route {
	all := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == unix.AF_INET6 {
		all = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{LinkIndex: lo, Dst: all, Table: p.Table, Type: unix.RTN_LOCAL,
		Scope: netlink.SCOPE_HOST, Protocol: RouteProtocol, Family: family}
}

// Leftovers lists gateway mode's netlink state in this network namespace
// (a running agent's, or what a crashed one left): rules and routes with
// RouteProtocol, bpf filters named ph_* with FilterPriority, and clsact
// qdiscs recorded in StateDir.
func Leftovers() ([]string, error) { return leftovers(false) }

// RemoveLeftovers removes what Leftovers lists and returns it.
func RemoveLeftovers() ([]string, error) { return leftovers(true) }

func leftovers(remove bool) (found []string, err error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer nl.Close()
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := nl.RuleList(family)
		if err != nil {
			if family == unix.AF_INET6 {
				continue // no IPv6 here
			}
			return nil, fmt.Errorf("list rules: %w", err)
		}
		for _, r := range rules {
			if r.Protocol != RouteProtocol {
				continue
			}
			found = append(found, fmt.Sprintf("rule: priority %d fwmark %#x table %d proto %d", r.Priority, r.Mark, r.Table, r.Protocol))
			if remove {
				if err := nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete rule %d: %w", r.Priority, err))
				}
			}
		}
		routes, err := nl.RouteListFiltered(family, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			if family == unix.AF_INET6 {
				continue
			}
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			found = append(found, fmt.Sprintf("route: local %s table %d proto %d", r.Dst, r.Table, r.Protocol))
			if remove {
				if err := nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete route in table %d: %w", r.Table, err))
				}
			}
		}
	}
	links, err := nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := nl.FilterList(l, parent)
			if err != nil {
				continue // no clsact qdisc
			}
			for _, f := range fs {
				bf, ok := f.(*netlink.BpfFilter)
				if !ok || bf.Priority != FilterPriority || !strings.HasPrefix(bf.Name, progPrefix) {
					continue
				}
				found = append(found, fmt.Sprintf("filter: %s on %s", bf.Name, l.Attrs().Name))
				if remove {
					if err := nl.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
						errs = append(errs, fmt.Errorf("delete filter %s on %s: %w", bf.Name, l.Attrs().Name, err))
					}
				}
			}
		}
		state := clsactState(l.Attrs().Name)
		if _, err := os.Stat(state); err == nil {
			found = append(found, "qdisc: clsact on "+l.Attrs().Name)
			if remove {
				errs = append(errs, removeOurClsact(nl, l.Attrs().Index, state))
			}
		}
	}
	return found, errors.Join(errs...)
}

// Install adds the rule and the route for IPv4 and, with ipv6, for IPv6;
// the closer removes exactly them. The table must hold no route
// proxy-hopper did not put there.
func (p PolicyRoute) Install(ipv6 bool) (_ io.Closer, err error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	c := &policyCloser{nl: nl}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	families := []int{unix.AF_INET}
	if ipv6 {
		families = append(families, unix.AF_INET6)
	}
	for _, family := range families {
		foreign, err := nl.RouteListFiltered(family, &netlink.Route{Table: p.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes of table %d: %w", p.Table, err)
		}
		for _, r := range foreign {
			if r.Protocol != RouteProtocol {
				return nil, fmt.Errorf("routing table %d is in use (%s): choose another transparent.gateway.table", p.Table, r)
			}
		}
		rt := p.route(family, lo.Attrs().Index)
		if err := nl.RouteReplace(rt); err != nil {
			return nil, fmt.Errorf("add route local %s dev lo table %d: %w", rt.Dst, p.Table, err)
		}
		c.routes = append(c.routes, rt)
		rule := p.rule(family)
		if err := nl.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add rule fwmark %#x table %d: %w", p.Mark, p.Table, err)
		}
		c.rules = append(c.rules, rule)
	}
	return c, nil
}

type policyCloser struct {
	nl     *netlink.Handle
	rules  []*netlink.Rule
	routes []*netlink.Route
}

func (c *policyCloser) Close() error {
	defer c.nl.Close()
	var errs []error
	for _, r := range c.rules {
		if err := c.nl.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule fwmark %#x: %w", r.Mark, err))
		}
	}
	for _, r := range c.routes {
		if err := c.nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route of table %d: %w", r.Table, err))
		}
	}
	return errors.Join(errs...)
}
