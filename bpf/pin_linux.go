package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ErrPinned means pinned state exists where an unpinned agent would start.
var ErrPinned = errors.New("pinned state exists")

// PinnedChange counts what InstallPinned did.
type PinnedChange struct {
	Installed bool // first install: staged and renamed into place
	Attached  int  // links attached and pinned
	Updated   int  // pinned links given the new program (link.Update)
	Removed   int  // pinned links no longer wanted, detached
}

// LoadPinned loads the programs against the maps pinned under dir, so that
// state recorded by an earlier agent (original destinations, sockets in
// the fast path) carries over. It returns an error wrapping os.ErrNotExist
// when nothing is pinned there.
func LoadPinned(dir string) (*Objects, error) {
	if _, err := os.Stat(filepath.Join(dir, "maps")); err != nil {
		return nil, fmt.Errorf("open pinned state %s: %w", dir, err)
	}
	existing := map[string]*ebpf.Map{}
	for _, name := range mapNames() {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", name), nil)
		if err != nil {
			for _, m := range existing {
				m.Close()
			}
			return nil, fmt.Errorf("open pinned map %s (pinned by another version? `proxy-hopper bpf detach` removes the pinned state): %v", name, err)
		}
		existing[name] = m
	}
	o, err := load(existing)
	if err != nil {
		return nil, fmt.Errorf("load programs against the pinned maps in %s (from another version? `proxy-hopper bpf detach` removes them): %w", dir, err)
	}
	o.pinnedFrom = dir
	return o, nil
}

// CgroupID is the id of a cgroup2 directory (its inode number), as link
// info and `bpf status` report it.
func CgroupID(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

type pinnedLink struct {
	name string // file name under links/
	path string // cgroup
	prog *ebpf.Program
	at   ebpf.AttachType
}

func (o *Objects) wantedLinks(cgroups, sockopsOnly []string) ([]pinnedLink, error) {
	var out []pinnedLink
	add := func(cg, what string, prog *ebpf.Program, at ebpf.AttachType) error {
		id, err := CgroupID(cg)
		if err != nil {
			return err
		}
		out = append(out, pinnedLink{name: fmt.Sprintf("cgroup-%d-%s", id, what), path: cg, prog: prog, at: at})
		return nil
	}
	for _, cg := range cgroups {
		for _, a := range []struct {
			what string
			prog *ebpf.Program
			at   ebpf.AttachType
		}{
			{"sockops", o.SockOps, ebpf.AttachCGroupSockOps},
			{"connect4", o.Connect4, ebpf.AttachCGroupInet4Connect},
			{"connect6", o.Connect6, ebpf.AttachCGroupInet6Connect},
		} {
			if err := add(cg, a.what, a.prog, a.at); err != nil {
				return nil, err
			}
		}
	}
	for _, cg := range sockopsOnly {
		if err := add(cg, "sockops", o.SockOps, ebpf.AttachCGroupSockOps); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// InstallPinned attaches connect4, connect6 and sockops to each of cgroups
// (and only sockops to each of sockopsOnly) and keeps the attachments on
// bpffs under dir, so they outlive this process.
//
// The first install is atomic: maps and links are pinned in a temporary
// directory next to dir, then made live with one rename; on any error
// nothing stays attached. When o was loaded with LoadPinned(dir), the
// pinned links are upgraded in place: each one already there gets o's
// program with link.Update (no moment without a program), links for new
// cgroups are attached and pinned, and links for cgroups no longer
// configured are detached. The link file descriptors are closed: the pins
// hold the links.
func (o *Objects) InstallPinned(dir string, cgroups, sockopsOnly []string) (ch PinnedChange, err error) {
	if o == nil || o.Connect4 == nil {
		return ch, ErrNotLoaded
	}
	want, err := o.wantedLinks(cgroups, sockopsOnly)
	if err != nil {
		return ch, err
	}
	if o.pinnedFrom == dir {
		return o.upgradePinned(dir, want)
	}
	if _, err := os.Stat(dir); err == nil {
		return ch, fmt.Errorf("install pinned state in %s: %w (load it with LoadPinned)", dir, ErrPinned)
	}
	// bpffs allows no dot in a name: no hidden file, a plain one.
	stage, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+"-stage-")
	if err != nil {
		return ch, fmt.Errorf("stage pinned state: %w", err)
	}
	var links []link.Link
	defer func() {
		// Unpinned (the stage is gone) and closed: detached.
		if err != nil {
			os.RemoveAll(stage)
		}
		for i := len(links) - 1; i >= 0; i-- {
			links[i].Close()
		}
	}()
	for _, sub := range []string{"maps", "links"} {
		if err := os.Mkdir(filepath.Join(stage, sub), 0o700); err != nil {
			return ch, fmt.Errorf("stage pinned state: %w", err)
		}
	}
	for _, nm := range o.maps() {
		if err := (*nm.m).Pin(filepath.Join(stage, "maps", nm.name)); err != nil {
			return ch, fmt.Errorf("pin map %s: %w", nm.name, err)
		}
	}
	for _, w := range want {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: w.path, Attach: w.at, Program: w.prog})
		if err != nil {
			return ch, fmt.Errorf("attach %s to %s: %w", w.name, w.path, err)
		}
		links = append(links, l)
		if err := l.Pin(filepath.Join(stage, "links", w.name)); err != nil {
			return ch, fmt.Errorf("pin link %s: %w", w.name, err)
		}
	}
	if err := os.Rename(stage, dir); err != nil {
		return ch, fmt.Errorf("make pinned state live in %s: %w", dir, err)
	}
	o.pinnedFrom = dir
	return PinnedChange{Installed: true, Attached: len(want)}, nil
}

func (o *Objects) upgradePinned(dir string, want []pinnedLink) (ch PinnedChange, err error) {
	ldir := filepath.Join(dir, "links")
	have, err := pinnedLinkNames(ldir)
	if err != nil {
		return ch, err
	}
	for _, w := range want {
		p := filepath.Join(ldir, w.name)
		if slices.Contains(have, w.name) {
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				return ch, fmt.Errorf("open pinned link %s: %w", w.name, err)
			}
			err = l.Update(w.prog)
			l.Close()
			if err != nil {
				return ch, fmt.Errorf("update pinned link %s: %w", w.name, err)
			}
			ch.Updated++
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: w.path, Attach: w.at, Program: w.prog})
		if err != nil {
			return ch, fmt.Errorf("attach %s to %s: %w", w.name, w.path, err)
		}
		err = l.Pin(p)
		l.Close()
		if err != nil {
			return ch, fmt.Errorf("pin link %s: %w", w.name, err)
		}
		ch.Attached++
	}
	for _, name := range have {
		if slices.ContainsFunc(want, func(w pinnedLink) bool { return w.name == name }) {
			continue
		}
		if err := removePinnedLink(filepath.Join(ldir, name)); err != nil {
			return ch, err
		}
		ch.Removed++
	}
	return ch, nil
}

func pinnedLinkNames(ldir string) ([]string, error) {
	ents, err := os.ReadDir(ldir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list pinned links: %w", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// removePinnedLink detaches a pinned link (even if someone else holds it)
// and removes its pin.
func removePinnedLink(p string) error {
	l, err := link.LoadPinnedLink(p, nil)
	if err != nil {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("remove pinned link %s: %w", p, errors.Join(err, rerr))
		}
		return nil
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach pinned link %s: %w", p, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", p, err)
	}
	return nil
}

// Pinned reports whether dir holds pinned state.
func Pinned(dir string) bool {
	_, err := os.Stat(dir)
	return err == nil
}

// DetachOptions narrow Detach.
type DetachOptions struct {
	PinDir  string   // pinned state to remove (PinDir when empty)
	Cgroups []uint64 // only links on these cgroup ids (all when empty)
}

// Detach detaches proxy-hopper's links, whoever holds them (an agent, a
// pin), and removes the pinned state. With Cgroups set, only links on those
// cgroups and their pins go; the rest of the pinned state (the maps) goes
// with the last pinned link. It returns how many links it detached.
func Detach(opts DetachOptions) (int, error) {
	dir := opts.PinDir
	if dir == "" {
		dir = PinDir
	}
	match := func(a Attachment) bool { return len(opts.Cgroups) == 0 || slices.Contains(opts.Cgroups, a.CgroupID) }
	n, err := DetachMatching(match)
	ldir := filepath.Join(dir, "links")
	names, lerr := pinnedLinkNames(ldir)
	err = errors.Join(err, lerr)
	left := 0
	for _, name := range names {
		if len(opts.Cgroups) > 0 && !slices.ContainsFunc(opts.Cgroups, func(id uint64) bool {
			return strings.HasPrefix(name, fmt.Sprintf("cgroup-%d-", id))
		}) {
			left++
			continue
		}
		err = errors.Join(err, removePinnedLink(filepath.Join(ldir, name)))
	}
	if left == 0 {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", dir, rerr))
		}
	}
	return n, err
}
