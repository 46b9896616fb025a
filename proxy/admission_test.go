package proxy

import (
	"errors"
	"net"
	"net/netip"
	"regexp"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// loopbackConn is the agent's side of a real loopback connection.
func loopbackConn(t *testing.T) *clientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return &clientConn{c: sc}
}

// TestAdmissionOrder pins which step refuses when several would, for each
// kind of entry (admissionSteps): the client's answer depends on it. The
// client is on loopback, outside the only source rule (10.0.0.0/8); the
// destination policy denies 127.0.0.0/8; target t1 takes 127.0.0.2.
func TestAdmissionOrder(t *testing.T) {
	a := mustAuth(t, auth.Config{Enabled: true,
		APIKeys: []auth.APIKey{{Name: "k", Key: "good", Targets: []string{"*"}}},
		Sources: []auth.SourceRule{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}})
	srv := New([]*Target{{Name: "t1", Regex: regexp.MustCompile(`127\.0\.0\.2`)}}, Options{
		Auth:         a,
		Destinations: &DestinationPolicy{Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	})
	cc := loopbackConn(t)
	head := func(fields ...Field) *request {
		return &request{head: &RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.1", Minor: 1, Fields: fields}}
	}
	token := Field{Name: HeaderAuth, Value: "Bearer good"}
	for _, c := range []struct {
		name    string
		e       entry
		outcome string
		status  int
		by      string // auth, destination or "" (no match)
		target  string
	}{
		// A transparent tunnel no target wants follows the unmatched
		// policy, whatever its destination.
		{"transparent tunnel, unmatched", entry{kind: entryTransparentTunnel, matchKey: "127.0.0.3:443", host: "127.0.0.3", port: 443},
			OutcomeNoMatch, 502, "", ""},
		// Its destination is checked before its source.
		{"transparent tunnel, matched", entry{kind: entryTransparentTunnel, matchKey: "127.0.0.2:443", host: "127.0.0.2", port: 443},
			OutcomeForbidden, 403, "destination", "t1"},
		// Transparent HTTP checks the source first, like every HTTP request.
		{"transparent HTTP", entry{kind: entryTransparentHTTP, req: head(token), matchKey: "http://127.0.0.2/", host: "127.0.0.2", port: 80},
			OutcomeForbidden, 403, "auth", "t1"},
		{"header mode without a token", entry{kind: entryHTTP, req: head(), matchKey: "http://127.0.0.2/", host: "127.0.0.2", port: 80},
			OutcomeAuthFailed, 401, "auth", ""},
		{"absolute-form without a token", entry{kind: entryHTTP, req: head(), matchKey: "http://127.0.0.2/", host: "127.0.0.2", port: 80, proxyForm: true},
			OutcomeAuthFailed, 407, "auth", ""},
		// The destination policy applies when nothing matches too.
		{"header mode, unmatched", entry{kind: entryHTTP, req: head(token), matchKey: "http://127.0.0.3/", host: "127.0.0.3", port: 80},
			OutcomeForbidden, 403, "destination", ""},
		{"CONNECT, matched", entry{kind: entryConnect, req: head(token), matchKey: "127.0.0.2:443", host: "127.0.0.2", port: 443, proxyForm: true},
			OutcomeForbidden, 403, "destination", "t1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := c.e
			e.cc = cc
			ad, rf := srv.admit(&e)
			if rf == nil {
				t.Fatalf("admitted to %s, want a refusal", ad.target.Name)
			}
			by := ""
			switch {
			case rf.authErr != nil:
				by = "auth"
			case rf.destination != "":
				by = "destination"
			}
			if rf.outcome != c.outcome || rf.status != c.status || by != c.by || rf.target != c.target {
				t.Errorf("refused %s %d by %q (target %q), want %s %d by %q (target %q)",
					rf.outcome, rf.status, by, rf.target, c.outcome, c.status, c.by, c.target)
			}
			if c.e.kind == entryTransparentHTTP && !errors.Is(rf.authErr, auth.ErrForbidden) {
				t.Errorf("source refusal %v, want auth.ErrForbidden", rf.authErr)
			}
		})
	}
}

// TestAdmissionClientLimits: CONNECT counts against the client's tunnel
// cap, header-mode requests against its request cap, transparent traffic
// against neither, and a count is given back by release.
func TestAdmissionClientLimits(t *testing.T) {
	srv := New([]*Target{{Name: "t1", Regex: regexp.MustCompile(`127\.0\.0\.2`)}}, Options{MaxClientTunnels: 1, MaxClientRequests: 1})
	cc := loopbackConn(t)
	req := &request{head: &RequestHead{Method: "GET", Target: "/", Proto: "HTTP/1.1", Minor: 1}}
	connect := entry{kind: entryConnect, cc: cc, req: req, matchKey: "127.0.0.2:443", host: "127.0.0.2", port: 443, proxyForm: true}
	header := entry{kind: entryHTTP, cc: cc, req: req, matchKey: "http://127.0.0.2/", host: "127.0.0.2", port: 80}
	tunnel := entry{kind: entryTransparentTunnel, cc: cc, matchKey: "127.0.0.2:443", host: "127.0.0.2", port: 443}

	first, rf := srv.admit(&connect)
	if rf != nil {
		t.Fatalf("first CONNECT refused: %+v", rf)
	}
	if _, rf := srv.admit(&connect); rf == nil || rf.outcome != OutcomeClientLimit || rf.status != 429 || rf.limit != "tunnels" || rf.target != "t1" {
		t.Fatalf("second CONNECT: %+v, want client_limit 429 on tunnels", rf)
	}
	r, rf := srv.admit(&header)
	if rf != nil {
		t.Fatalf("request beside a tunnel refused: %+v", rf)
	}
	if _, rf := srv.admit(&header); rf == nil || rf.limit != "requests" {
		t.Fatalf("second request: %+v, want client_limit on requests", rf)
	}
	for range 3 {
		if ad, rf := srv.admit(&tunnel); rf != nil || ad.release != nil {
			t.Fatalf("transparent tunnel: %+v %+v, want admitted and not counted", ad, rf)
		}
	}
	first.release()
	r.release()
	if n := srv.inflight.entries(); n != 0 {
		t.Fatalf("%d per-client entries after release, want 0", n)
	}
	if _, rf := srv.admit(&connect); rf != nil {
		t.Fatalf("CONNECT after release refused: %+v", rf)
	}
}
