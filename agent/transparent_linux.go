package agent

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
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// markingDialer is the dialer of every outgoing connection of an agent in
// local transparent mode: SO_MARK tells connect4/6 to leave the socket alone,
// so the agent never redirects its own connections to itself.
func markingDialer(mark uint32) *net.Dialer {
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

// transparent is the running local transparent mode: the BPF objects, what
// is attached, and the listeners connect4/6 send connections to.
type transparent struct {
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

// startTransparent loads and attaches the data plane and starts accepting
// redirected connections. On error nothing is left attached.
func (a *Agent) startTransparent(ctx context.Context) (_ io.Closer, err error) {
	lc := a.res.Transparent.Local
	if err := bpf.Probe(); err != nil {
		return nil, err
	}
	var objs *bpf.Objects
	switch {
	case lc.Pinned:
		// Take over what an earlier pinned agent left: same maps, programs
		// replaced in its links below.
		objs, err = bpf.LoadPinned(lc.PinDir)
		if errors.Is(err, os.ErrNotExist) {
			objs, err = bpf.Load()
		}
	case bpf.Pinned(lc.PinDir):
		err = fmt.Errorf("transparent.local.pinned is false but %s holds the pinned redirect of an earlier agent: "+
			"remove it with `proxy-hopper bpf detach` or set pinned: true: %w", lc.PinDir, bpf.ErrPinned)
	default:
		objs, err = bpf.Load()
	}
	if err != nil {
		return nil, err
	}
	t := &transparent{log: a.log.With("component", "transparent"), objs: objs, pinned: lc.Pinned}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	ln4, err := proxy.Listen(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(lc.Port))))
	if err != nil {
		return nil, fmt.Errorf("listen for transparent connections: %w", err)
	}
	t.lns = append(t.lns, ln4)
	port := ln4.Addr().(*net.TCPAddr).Port
	if ln6, err := proxy.Listen(ctx, net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		t.lns = append(t.lns, ln6)
	} else {
		t.log.Warn("no IPv6 loopback listener: IPv6 connects will fail while redirected", "err", err)
	}

	cfg := bpf.Config{ListenPort: uint16(port), Mark: lc.Mark, Sockmap: lc.Sockmap, Ports: lc.Ports, Include: lc.Include, Exclude: lc.Exclude}
	var paths []string
	for _, cg := range lc.Cgroups {
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
			t.log.Warn("sockmap fast path off: the agent's cgroup is unknown", "err", err)
			cfg.Sockmap = false
		} else if root, _ := bpf.Cgroup2Root(); own == root {
			t.log.Warn("sockmap fast path off: the agent runs in the root cgroup, where it attaches nothing")
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
			t.log.Warn("sockmap fast path off", "err", err)
			cfg.Sockmap = false
		case lc.Pinned:
			t.fast = sk.Counter()
		default:
			t.fast = sk
		}
	}
	t.bcfg = cfg
	cfg.Exclude = append(slices.Clone(cfg.Exclude), a.upstreamPrefixes(ctx)...)
	if err := objs.Configure(cfg); err != nil {
		return nil, err
	}
	if lc.Pinned {
		ch, err := objs.InstallPinned(lc.PinDir, paths, sockopsOnly)
		if err != nil {
			return nil, err
		}
		t.log.Info("pinned redirect", "dir", lc.PinDir, "installed", ch.Installed,
			"attached", ch.Attached, "updated", ch.Updated, "removed", ch.Removed)
	} else {
		for _, path := range paths {
			links, err := objs.AttachCgroup(path)
			if err != nil {
				return nil, err
			}
			for _, l := range links {
				t.closers = append(t.closers, l)
			}
		}
		for _, own := range sockopsOnly {
			l, err := objs.AttachSockOps(own)
			if err != nil {
				return nil, err
			}
			t.closers = append(t.closers, l)
		}
	}
	for _, ln := range t.lns {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			serveAccepted(ln, a.srv, t.log, "transparent", func(c net.Conn) (netip.AddrPort, error) {
				return t.objs.TakeOrigin(c.RemoteAddr().(*net.TCPAddr).AddrPort())
			})
		}()
	}
	t.live = true
	t.log.Info("transparent mode on", "listen", port, "cgroups", paths, "ports", lc.Ports, "sockmap", cfg.Sockmap, "pinned", lc.Pinned)
	return t, nil
}

// refreshTransparentUpstreams re-excludes the upstream proxies' addresses
// from the redirect after a reload changed them. Caller holds a.reload.mu.
func (a *Agent) refreshTransparentUpstreams(ctx context.Context) {
	t, ok := a.tp.(*transparent)
	if !ok || t == nil {
		return
	}
	cfg := t.bcfg
	cfg.Exclude = append(slices.Clone(cfg.Exclude), a.upstreamPrefixes(ctx)...)
	if err := t.objs.Configure(cfg); err != nil {
		t.log.Error("update the upstream exclusions after a reload", "err", err)
	}
}

// upstreamPrefixes are the upstream proxies' addresses, never redirected.
func (a *Agent) upstreamPrefixes(ctx context.Context) []netip.Prefix {
	seen := map[netip.Addr]bool{}
	var out []netip.Prefix
	add := func(ip netip.Addr) {
		ip = ip.Unmap()
		if !seen[ip] {
			seen[ip] = true
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	for _, tg := range a.Targets() {
		for _, u := range tg.Upstreams {
			host, _, err := net.SplitHostPort(u.Addr)
			if err != nil {
				host = u.Addr
			}
			if ip, err := netip.ParseAddr(host); err == nil {
				add(ip)
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ips, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
			cancel()
			if err != nil {
				a.log.Warn("cannot resolve upstream to exclude it from the redirect", "upstream", u.Addr, "err", err)
			}
			for _, ip := range ips {
				add(ip)
			}
		}
	}
	return out
}

// serveAccepted hands every connection ln accepts to srv's transparent
// path, with the original destination origOf finds for it; a connection
// without one is closed. It returns when ln is closed.
func serveAccepted(ln net.Listener, srv *proxy.Server, log *slog.Logger, what string, origOf func(net.Conn) (netip.AddrPort, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("accept "+what+" connection", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		orig, err := origOf(c)
		if err != nil {
			log.Debug("connection without an original destination", "client", c.RemoteAddr().String(), "err", err)
			c.Close()
			continue
		}
		go srv.ServeTransparent(c, orig)
	}
}

// Stop detaches what steers new connections here (in reverse order) and
// stops the listeners. Connections being served are left to the proxy
// server's shutdown, and the fast path stays for them: freeing its maps
// would drop the bytes still queued at the agent's sockets. Close releases
// it.
//
// Pinned, nothing is detached: connects from the cgroups keep going to the
// listener's port, and are refused until the next agent takes over.
func (t *transparent) Stop() error {
	if t.stopped {
		return nil
	}
	t.stopped = true
	if t.pinned && t.live {
		t.log.Info("pinned redirect stays: connects from the cgroups are refused until the next agent starts (`proxy-hopper bpf detach` removes it)")
	}
	var errs []error
	for i := len(t.closers) - 1; i >= 0; i-- {
		errs = append(errs, t.closers[i].Close())
	}
	t.closers = nil
	for _, ln := range t.lns {
		errs = append(errs, ln.Close())
	}
	t.wg.Wait()
	return errors.Join(errs...)
}

// Close stops (if Stop was not called) and releases the fast path and the
// BPF objects.
func (t *transparent) Close() error {
	errs := []error{t.Stop()}
	if t.fast != nil {
		errs = append(errs, t.fast.Close())
		t.fast = nil
	}
	errs = append(errs, t.objs.Close())
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
