package proxy

import (
	"crypto/tls"
	"log/slog"
	"net"
	"regexp"
	"testing"
	"time"
)

// TestSetTargetsGenerations: a target's generations share one upstream
// directory (so a request of the old generation retried onto an IP only
// the new one lists still gets that IP's credentials) and, with the same
// TLS config, one transport; a transport no generation uses is retired.
func TestSetTargetsGenerations(t *testing.T) {
	re := regexp.MustCompile(".*")
	upA := Upstream{Addr: "10.0.0.1:1", Username: "a", Password: "pa"}
	upB := Upstream{Addr: "10.0.0.2:1", Username: "b", Password: "pb"}
	upC := Upstream{Addr: "10.0.0.3:1", Username: "c", Password: "pc"}
	gen1 := &Target{Name: "t", Regex: re, Upstreams: map[string]Upstream{upA.Addr: upA}}
	other := &Target{Name: "o", Regex: re, Upstreams: map[string]Upstream{upC.Addr: upC}}
	s := New([]*Target{gen1, other}, Options{Logger: slog.New(slog.DiscardHandler)})
	gen2 := &Target{Name: "t", Regex: re, Upstreams: map[string]Upstream{upB.Addr: upB}}
	s.SetTargets([]*Target{gen2})
	if gen2.tr != gen1.tr || gen2.dir != gen1.dir {
		t.Fatalf("the next generation of t does not share its transport and directory")
	}
	if got := gen1.upstream(upB.Addr); got != upB {
		t.Errorf("old generation, IP of the new one: %+v, want %+v", got, upB)
	}
	if got := gen2.upstream(upA.Addr); got != upA {
		t.Errorf("new generation, IP just removed (still draining): %+v, want %+v", got, upA)
	}
	if !other.tr.retired {
		t.Errorf("the removed target's transport is not retired")
	}
	if gen2.tr.retired || !gen2.tr.keeps(connKey{proxy: upB.Addr}) || gen2.tr.keeps(connKey{proxy: upA.Addr}) {
		t.Errorf("t's transport keeps the wrong IPs: live %v", gen2.tr.live)
	}
	// Another generation with a different TLS config: a new transport, the
	// old one retired; the directory forgets A (two generations back).
	gen3 := &Target{Name: "t", Regex: re, Upstreams: map[string]Upstream{upC.Addr: upC}, TLS: &tls.Config{InsecureSkipVerify: true}}
	s.SetTargets([]*Target{gen3})
	if gen3.tr == gen2.tr || !gen2.tr.retired {
		t.Errorf("a new TLS config did not get its own transport, or the old one was not retired")
	}
	if got := gen3.upstream(upA.Addr); got != (Upstream{Addr: upA.Addr}) {
		t.Errorf("IP of two generations back: %+v, want the bare address", got)
	}
	if got := gen2.upstream(upB.Addr); got != upB {
		t.Errorf("a generation's own IP: %+v", got)
	}
	// A retired transport closes connections handed back to it.
	c1, c2 := net.Pipe()
	defer c2.Close()
	uc := gen2.tr.wrap(c1, connKey{proxy: upB.Addr})
	gen2.tr.put(uc)
	_ = c2.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection returned to a retired transport was kept open")
	}
}
