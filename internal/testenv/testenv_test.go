package testenv

import (
	"net"
	"strconv"
	"testing"
)

// TestTinyproxyOwnsItsPort: a tinyproxy started on a port another one
// already holds is told apart (StartTinyproxy then starts it again on
// another port), so a test never talks to another test's upstream.
func TestTinyproxyOwnsItsPort(t *testing.T) {
	a, owned := startTinyproxy(t, "127.0.0.2", TinyproxyOptions{})
	if !owned {
		t.Fatal("a fresh tinyproxy is not seen as the owner of its port")
	}
	_, p, _ := net.SplitHostPort(a.Addr)
	port, _ := strconv.Atoi(p)
	if _, owned := startTinyproxy(t, "127.0.0.2", TinyproxyOptions{Port: port}); owned {
		t.Fatal("a tinyproxy that could not bind its port is seen as its owner")
	}
	b := StartTinyproxy(t, "127.0.0.2", TinyproxyOptions{})
	if b.Addr == a.Addr {
		t.Fatal("two tinyproxies on one address")
	}
}
