package testenv

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestNetworkIsolated shows that the suite cannot reach the world: under
// `make test` (PH_REQUIRE_ISOLATION=1) every test process runs in the
// private network namespace of scripts/isolated.sh, where only loopback is
// up, so a connect to a public address fails at once with "network is
// unreachable" and no packet leaves the machine. A plain `go test` outside
// it skips: it must not try to reach a public address there.
func TestNetworkIsolated(t *testing.T) {
	if os.Getenv("PH_REQUIRE_ISOLATION") != "1" {
		t.Skip("not run through `make test` (scripts/isolated.sh): the suite is not isolated from the network here")
	}
	// Ask the kernel first: this sends nothing. Outside the namespace a
	// route exists, and then the test fails without dialling.
	for _, dst := range []string{"192.0.2.1", "2001:db8::1"} {
		if routes, err := netlink.RouteGet(net.ParseIP(dst)); err == nil {
			dev := ""
			if len(routes) > 0 {
				if l, lerr := netlink.LinkByIndex(routes[0].LinkIndex); lerr == nil {
					dev = l.Attrs().Name
				}
			}
			t.Fatalf("the suite runs outside its private network namespace: %s is routed (dev %q); run it with `make test` (scripts/isolated.sh)", dst, dev)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" && l.Attrs().Flags&net.FlagUp != 0 {
			t.Errorf("interface %s is up in the suite's namespace: only lo may be", l.Attrs().Name)
		}
	}
	for _, addr := range []string{"192.0.2.1:80", "[2001:db8::1]:80"} {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		took := time.Since(start)
		if err == nil {
			c.Close()
			t.Fatalf("connected to %s from inside the test suite", addr)
		}
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("connect %s: %v, want network is unreachable", addr, err)
		}
		if took > time.Second {
			t.Errorf("connect %s took %v to fail, want at once", addr, took)
		}
	}
	if os.Getenv("PH_ISOLATED") != "1" {
		t.Errorf("PH_ISOLATED is not set: the suite was not started by scripts/isolated.sh")
	}
}
