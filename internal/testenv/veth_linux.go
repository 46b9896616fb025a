package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Veth connects two test namespaces with a veth pair: aIf in a with
// addresses aAddrs (such as "198.18.1.1/24"; IPv6 ones without duplicate
// address detection), bIf in b with bAddrs; both up.
func Veth(t testing.TB, a *Netns, aIf string, aAddrs []string, b *Netns, bIf string, bAddrs []string) {
	t.Helper()
	nl := a.handle(t)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aIf}, PeerName: bIf, PeerNamespace: netlink.NsFd(int(b.h))}
	if err := nl.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s/%s: %v", aIf, bIf, err)
	}
	for _, side := range []struct {
		n     *Netns
		name  string
		addrs []string
	}{{a, aIf, aAddrs}, {b, bIf, bAddrs}} {
		h := side.n.handle(t)
		l, err := h.LinkByName(side.name)
		if err != nil {
			t.Fatalf("find %s in %s: %v", side.name, side.n.Name, err)
		}
		for _, s := range side.addrs {
			addr, err := netlink.ParseAddr(s)
			if err != nil {
				t.Fatal(err)
			}
			if addr.IP.To4() == nil {
				addr.Flags |= unix.IFA_F_NODAD // usable at once
			}
			if err := h.AddrAdd(l, addr); err != nil {
				t.Fatalf("add %s to %s in %s: %v", s, side.name, side.n.Name, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("bring %s up in %s: %v", side.name, side.n.Name, err)
		}
	}
}

// Route adds a route to dst ("default" or a CIDR) via gw inside n. Test
// namespaces only ever route to each other.
func (n *Netns) Route(t testing.TB, dst, gw string) {
	t.Helper()
	r := &netlink.Route{Gw: net.ParseIP(gw)}
	if dst != "default" {
		_, d, err := net.ParseCIDR(dst)
		if err != nil {
			t.Fatal(err)
		}
		r.Dst = d
	}
	if err := n.handle(t).RouteAdd(r); err != nil {
		t.Fatalf("route %s via %s in %s: %v", dst, gw, n.Name, err)
	}
}

// Sysctl writes a /proc/sys/net value (key as "net/ipv4/ip_forward") inside n.
func (n *Netns) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	err := n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}

// String is the namespace's name.
func (n *Netns) String() string { return fmt.Sprintf("netns %s", n.Name) }
