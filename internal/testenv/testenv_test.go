package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
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

// TestReservePort: a port handed out is reserved for other test processes
// until the reservation is old.
func TestReservePort(t *testing.T) {
	p := filepath.Join(t.TempDir(), "127.0.0.1-1234")
	if !reservePort(p) {
		t.Fatal("a fresh reservation failed")
	}
	if reservePort(p) {
		t.Fatal("a port reserved a moment ago was handed out again")
	}
	old := time.Now().Add(-10 * time.Minute)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	if !reservePort(p) {
		t.Fatal("an old reservation was not taken over")
	}
}
