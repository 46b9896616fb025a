package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxy-hopper/proxy-hopper/bpf"
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
				if !ok || bf.Priority != FilterPriority || !strings.HasPrefix(bf.Name, bpf.ProgPrefix) {
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
