package bpf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ProgPrefix starts the name of every proxy-hopper program (ph_connect4,
// ph_lan_ingress…): status, detach and the gateway's leftover filters
// find them by it.
const ProgPrefix = "ph_"

// Attachment is one proxy-hopper program attached through a BPF link.
type Attachment struct {
	LinkID   link.ID
	Program  string
	Type     link.Type
	CgroupID uint64 // for cgroup links
	Ifindex  uint32 // for TCX links (gateway mode): the interface, in its network namespace
	Attach   string // the cgroup or TCX attach type
}

func (a Attachment) String() string {
	s := fmt.Sprintf("link %d: %s", a.LinkID, a.Program)
	if a.CgroupID != 0 {
		s += fmt.Sprintf(" on cgroup id %d (%s)", a.CgroupID, a.Attach)
	}
	if a.Ifindex != 0 {
		s += fmt.Sprintf(" on ifindex %d (%s)", a.Ifindex, a.Attach)
	}
	return s
}

// Status lists proxy-hopper's attached links (whoever holds them) and the
// files pinned under PinDir.
func Status() ([]Attachment, []string, error) { return StatusOf(PinDir) }

// StatusOf is Status with the pinned state looked for in dir.
func StatusOf(dir string) (atts []Attachment, pins []string, err error) {
	err = eachLink(func(l link.Link, a Attachment) error {
		atts = append(atts, a)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			pins = append(pins, p)
		}
		return nil
	})
	return atts, pins, nil
}

// DetachAll detaches every proxy-hopper link (even one a running agent
// holds: its connects then go to their destinations) and removes PinDir.
func DetachAll() (int, error) { return Detach(DetachOptions{}) }

// DetachMatching detaches the proxy-hopper cgroup and TCX links that
// match. Other links (the fast path's recv counter, a raw tracepoint) cannot
// be detached; they go with the agent that holds them.
func DetachMatching(match func(Attachment) bool) (int, error) {
	n := 0
	err := eachLink(func(l link.Link, a Attachment) error {
		if (a.CgroupID == 0 && a.Ifindex == 0) || !match(a) {
			return nil
		}
		if err := l.Detach(); err != nil {
			return fmt.Errorf("detach %s: %w", a, err)
		}
		n++
		return nil
	})
	return n, err
}

func eachLink(fn func(link.Link, Attachment) error) error {
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			continue
		}
		pi, err := prog.Info()
		prog.Close()
		if err != nil || !strings.HasPrefix(pi.Name, ProgPrefix) {
			continue
		}
		a := Attachment{LinkID: info.ID, Program: pi.Name, Type: info.Type}
		if cg := info.Cgroup(); cg != nil {
			a.CgroupID = cg.CgroupId
			a.Attach = ebpf.AttachType(cg.AttachType).String()
		}
		if tcx := info.TCX(); tcx != nil {
			a.Ifindex = tcx.Ifindex
			a.Attach = ebpf.AttachType(tcx.AttachType).String()
		}
		if err := fn(it.Link, a); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	return nil
}
