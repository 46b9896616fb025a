package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netns is a network namespace made for one test: loopback up, no route
// out unless the test adds one (it must not). Traffic to 198.18.0.0/15 in
// here never leaves the machine.
type Netns struct {
	Name string
	Path string // /run/netns/Name, for nsenter --net=
	h    netns.NsHandle
}

var netnsSeq atomic.Int64

// NewNetns creates a named network namespace and deletes it when the test
// ends. Programs run in it with Command (nsenter --net, which keeps the
// mount namespace, so cgroup2 and bpffs stay visible).
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("ph-test-%d-%d", os.Getpid(), netnsSeq.Add(1))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	if err := netns.Set(orig); err != nil {
		// This thread is in the new namespace: never let Go reuse it.
		runtime.LockOSThread()
		t.Fatalf("return to the original netns: %v", err)
	}
	n := &Netns{Name: name, Path: filepath.Join("/run/netns", name), h: h}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	nl := n.handle(t)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo in %s: %v", name, err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatalf("bring lo up in %s: %v", name, err)
	}
	return n
}

func (n *Netns) handle(t testing.TB) *netlink.Handle {
	t.Helper()
	nl, err := netlink.NewHandleAt(n.h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// AddAddrs puts addrs (such as "198.18.0.10/32") on the namespace's
// loopback: they are local, and nothing routes out of the namespace.
func (n *Netns) AddAddrs(t testing.TB, addrs ...string) {
	t.Helper()
	nl := n.handle(t)
	l, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		if addr.IP.To4() == nil {
			// No duplicate address detection: even on lo an IPv6 address
			// is tentative (bind fails with EADDRNOTAVAIL) until the
			// kernel's DAD work runs, which a loaded machine delays.
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := nl.AddrAdd(l, addr); err != nil {
			t.Fatalf("add %s to lo in %s: %v", a, n.Name, err)
		}
	}
}

// Do runs fn on a thread switched into the namespace. Sockets made by fn
// stay in it; goroutines fn starts run in the original namespace.
func (n *Netns) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(n.h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine.
		return fmt.Errorf("leave netns %s: %w", n.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen opens a TCP listener inside the namespace.
func (n *Netns) Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, n.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects from inside the namespace.
func (n *Netns) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, timeout); return err })
	return c, err
}

// WaitListening waits until addr accepts connections inside the namespace.
func (n *Netns) WaitListening(t testing.TB, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := n.Dial(addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening in %s after %s: %v", addr, n.Name, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Command runs name inside the namespace (nsenter --net, same PID).
func (n *Netns) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path, name}, args...)...)
}

func (n *Netns) tinyproxyCommand(t testing.TB, dir, bin, conf, hosts string) *exec.Cmd {
	if hosts == "" {
		return n.Command(bin, "-d", "-c", conf)
	}
	hf := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hf, []byte("127.0.0.1 localhost\n"+hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	// A private mount namespace, so the bind over /etc/hosts is tinyproxy's only.
	return n.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /etc/hosts && exec "$2" -d -c "$3"`, "sh", hf, bin, conf)
}
