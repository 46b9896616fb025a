package gateway

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
func AttachTC(prog *ebpf.Program, ifname string, ingress bool, mode TCMode) (*TCAttachment, error) {
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
