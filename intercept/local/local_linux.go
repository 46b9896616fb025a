package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/proxy-hopper/proxy-hopper/bpf"
	"github.com/proxy-hopper/proxy-hopper/intercept"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// Dialer is the dialer of every outgoing connection of an agent in local
// transparent mode: SO_MARK tells connect4/6 to leave the socket alone, so
// the agent never redirects its own connections to itself.
func Dialer(mark uint32) *net.Dialer {
	return &net.Dialer{
		KeepAlive: 30 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set SO_MARK %#x: %w", mark, serr)
			}
			return nil
		},
	}
}

// Mode is the running local transparent mode: the BPF objects, what is
// attached, and the listeners connect4/6 send connections to.
type Mode struct {
	log     *slog.Logger
	pinned  bool
	live    bool // fully started
	objs    *bpf.Objects
	closers []io.Closer // in attach order; closed in reverse
	fast    io.Closer   // the fast path (or, pinned, its recv counter): released last
	stopped bool
	bcfg    bpf.Config // as configured, without the upstreams' prefixes
	lns     []net.Listener
	wg      sync.WaitGroup
}

// Start loads and attaches the data plane and starts accepting redirected
// connections. On error nothing is left attached.
func Start(ctx context.Context, o Options) (_ *Mode, err error) {
	if err := bpf.Probe(); err != nil {
		return nil, err
	}
	var objs *bpf.Objects
	switch {
	case o.Pinned:
		// Take over what an earlier pinned agent left: same maps, programs
		// replaced in its links below.
		objs, err = bpf.LoadPinned(o.PinDir)
		if errors.Is(err, os.ErrNotExist) {
			objs, err = bpf.Load()
		}
	case bpf.Pinned(o.PinDir):
		err = fmt.Errorf("transparent.local.pinned is false but %s holds the pinned redirect of an earlier agent: "+
			"remove it with `proxy-hopper bpf detach` or set pinned: true: %w", o.PinDir, bpf.ErrPinned)
	default:
		objs, err = bpf.Load()
	}
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Mode{log: log, objs: objs, pinned: o.Pinned}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	ln4, err := proxy.Listen(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(o.Port))))
	if err != nil {
		return nil, fmt.Errorf("listen for transparent connections: %w", err)
	}
	m.lns = append(m.lns, ln4)
	port := ln4.Addr().(*net.TCPAddr).Port
	if ln6, err := proxy.Listen(ctx, net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		m.lns = append(m.lns, ln6)
	} else {
		m.log.Warn("no IPv6 loopback listener: IPv6 connects will fail while redirected", "err", err)
	}

	cfg := bpf.Config{ListenPort: uint16(port), Mark: o.Mark, Sockmap: o.Sockmap,
		Ports: slices.Clone(o.Ports), Include: slices.Clone(o.Include), Exclude: slices.Clone(o.Exclude)}
	var paths []string
	for _, cg := range o.Cgroups {
		path, err := bpf.CgroupPath(cg)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("transparent.local.cgroups: %w", err)
		}
		paths = append(paths, path)
	}
	var sockopsOnly []string
	if cfg.Sockmap {
		// The agent's accepted sockets (the fast path's redirect targets)
		// join from sockops, which runs for the listener's cgroup: the
		// agent's own. Without them nothing is fast.
		if own, err := ownCgroup(); err != nil || own == "" {
			m.log.Warn("sockmap fast path off: the agent's cgroup is unknown", "err", err)
			cfg.Sockmap = false
		} else if root, _ := bpf.Cgroup2Root(); own == root {
			m.log.Warn("sockmap fast path off: the agent runs in the root cgroup, where it attaches nothing")
			cfg.Sockmap = false
		} else if !under(own, paths) {
			sockopsOnly = append(sockopsOnly, own)
		}
	}
	if cfg.Sockmap {
		// Attaching replaces the program an earlier pinned agent left on the
		// pinned SOCKHASH. Pinned, it stays with the map; the counter of what
		// its sockets read is the agent's own either way (without it the
		// fast path sends to TCP whatever would pass the queue limit).
		sk, err := objs.AttachSkMsg()
		switch {
		case err != nil:
			m.log.Warn("sockmap fast path off", "err", err)
			cfg.Sockmap = false
		case o.Pinned:
			m.fast = sk.Counter()
		default:
			m.fast = sk
		}
	}
	m.bcfg = cfg
	var ups []netip.Prefix
	if o.Upstreams != nil {
		ups = o.Upstreams(ctx)
	}
	cfg.Exclude = append(slices.Clone(cfg.Exclude), ups...)
	if err := objs.Configure(cfg); err != nil {
		return nil, err
	}
	if o.Pinned {
		ch, err := objs.InstallPinned(o.PinDir, paths, sockopsOnly)
		if err != nil {
			return nil, err
		}
		m.log.Info("pinned redirect", "dir", o.PinDir, "installed", ch.Installed,
			"attached", ch.Attached, "updated", ch.Updated, "removed", ch.Removed)
	} else {
		for _, path := range paths {
			links, err := objs.AttachCgroup(path)
			if err != nil {
				return nil, err
			}
			for _, l := range links {
				m.closers = append(m.closers, l)
			}
		}
		for _, own := range sockopsOnly {
			l, err := objs.AttachSockOps(own)
			if err != nil {
				return nil, err
			}
			m.closers = append(m.closers, l)
		}
	}
	for _, ln := range m.lns {
		m.wg.Go(func() {
			intercept.Serve(ln, o.Handler, m.log, "transparent", func(c net.Conn) (netip.AddrPort, error) {
				return m.objs.TakeOrigin(c.RemoteAddr().(*net.TCPAddr).AddrPort())
			})
		})
	}
	m.live = true
	m.log.Info("transparent mode on", "listen", port, "cgroups", paths, "ports", o.Ports, "sockmap", cfg.Sockmap, "pinned", o.Pinned)
	return m, nil
}

// ExcludeUpstreams makes ups the upstream proxies' prefixes kept out of
// the redirect, in place of the earlier ones (a reload changed them).
func (m *Mode) ExcludeUpstreams(ups []netip.Prefix) {
	cfg := m.bcfg
	cfg.Exclude = append(slices.Clone(cfg.Exclude), ups...)
	if err := m.objs.Configure(cfg); err != nil {
		m.log.Error("update the upstream exclusions after a reload", "err", err)
	}
}

// Objects are the loaded programs and maps (for status and tests: the
// Mode owns them).
func (m *Mode) Objects() *bpf.Objects { return m.objs }

// Stop detaches what steers new connections here (in reverse order) and
// stops the listeners. Connections being served are left to the proxy
// server's shutdown, and the fast path stays for them: freeing its maps
// would drop the bytes still queued at the agent's sockets. Close releases
// it.
//
// Pinned, nothing is detached: connects from the cgroups keep going to the
// listener's port, and are refused until the next agent takes over.
func (m *Mode) Stop() error {
	if m.stopped {
		return nil
	}
	m.stopped = true
	if m.pinned && m.live {
		m.log.Info("pinned redirect stays: connects from the cgroups are refused until the next agent starts (`proxy-hopper bpf detach` removes it)")
	}
	var errs []error
	for i := len(m.closers) - 1; i >= 0; i-- {
		errs = append(errs, m.closers[i].Close())
	}
	m.closers = nil
	for _, ln := range m.lns {
		errs = append(errs, ln.Close())
	}
	m.wg.Wait()
	return errors.Join(errs...)
}

// Close stops (if Stop was not called) and releases the fast path and the
// BPF objects.
func (m *Mode) Close() error {
	errs := []error{m.Stop()}
	if m.fast != nil {
		errs = append(errs, m.fast.Close())
		m.fast = nil
	}
	errs = append(errs, m.objs.Close())
	return errors.Join(errs...)
}

// ownCgroup is the cgroup2 directory of this process.
func ownCgroup() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			root, err := bpf.Cgroup2Root()
			if err != nil {
				return "", err
			}
			return filepath.Join(root, rest), nil
		}
	}
	return "", sc.Err()
}

func under(p string, parents []string) bool {
	for _, q := range parents {
		if p == q || strings.HasPrefix(p, q+"/") {
			return true
		}
	}
	return false
}
