package mitm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newMinter is a Minter over a fresh CA (valid 5 years from now).
func newMinter(t testing.TB, opts MinterOptions) (*Minter, *x509.CertPool) {
	t.Helper()
	ca, _, _ := genCA(t, time.Now(), 0)
	m, err := NewMinter(ca, opts)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return m, pool
}

// serveTLS accepts on 127.0.0.1 (or addr) with ServerConfig(m); each
// connection gets the negotiated protocol written back, then is closed.
func serveTLS(t testing.TB, m *Minter, addr string) string {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	cfg := ServerConfig(m)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				io.WriteString(tc, "proto="+tc.ConnectionState().NegotiatedProtocol+"\n")
				tc.CloseWrite()
				io.Copy(io.Discard, io.LimitReader(tc, 1<<10))
			})
		}
	})
	return ln.Addr().String()
}

// handshake dials addr as a client trusting pool, with serverName (an IP
// literal sends no SNI) and ALPN protos; it returns the server's leaf and
// the protocol the server reports.
func handshake(t testing.TB, addr, serverName string, protos []string, pool *x509.CertPool) (*x509.Certificate, string, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: serverName, RootCAs: pool, NextProtos: protos})
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	b, err := io.ReadAll(io.LimitReader(c, 1<<10))
	if err != nil {
		return nil, "", err
	}
	st := c.ConnectionState()
	if got, want := string(b), "proto="+st.NegotiatedProtocol+"\n"; got != want {
		t.Errorf("server says %q, client negotiated %q", got, want)
	}
	return st.PeerCertificates[0], st.NegotiatedProtocol, nil
}

// TestHandshakeSNI: a client that trusts the CA verifies the leaf for its
// SNI (exact DNS SAN, server auth, 128-bit serial, 24h + 1h backdate);
// ALPN gives h2 when offered, http/1.1 when only that is, none without.
func TestHandshakeSNI(t *testing.T) {
	m, pool := newMinter(t, MinterOptions{})
	addr := serveTLS(t, m, "")
	for _, tc := range []struct {
		protos []string
		want   string
	}{
		{[]string{"h2", "http/1.1"}, "h2"},
		{[]string{"http/1.1"}, "http/1.1"},
		{[]string{"http/1.1", "h2"}, "h2"},
		{nil, ""},
	} {
		leaf, proto, err := handshake(t, addr, "Shop.Example.com", tc.protos, pool)
		if err != nil {
			t.Fatalf("ALPN %q: %v", tc.protos, err)
		}
		if proto != tc.want {
			t.Errorf("ALPN %q: negotiated %q, want %q", tc.protos, proto, tc.want)
		}
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "shop.example.com" || len(leaf.IPAddresses) != 0 {
			t.Errorf("SANs %q %v", leaf.DNSNames, leaf.IPAddresses)
		}
		if leaf.IsCA || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
			t.Errorf("leaf IsCA %v EKU %v", leaf.IsCA, leaf.ExtKeyUsage)
		}
		if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
			t.Errorf("serial %v", leaf.SerialNumber)
		}
		if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 25*time.Hour-2*time.Second || d > 25*time.Hour {
			t.Errorf("leaf valid %v, want 25h (24h + 1h backdate)", d)
		}
		if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("leaf key %T", leaf.PublicKey)
		}
	}
	// Another name: another leaf; the client refuses a leaf for a name it
	// did not ask (checked by asking through a config without the CA).
	if _, _, err := handshake(t, addr, "other.example.com", nil, x509.NewCertPool()); err == nil {
		t.Error("a client without the CA accepted the leaf")
	}
	if s := m.Stats(); s.Mints != 2 || s.Hits != 3 || s.Misses != 2 {
		t.Errorf("stats %+v, want 2 mints (two names), 3 hits", s)
	}
}

// TestHandshakeIP: without SNI (the client dials an IP literal), the leaf
// names the local IP of the connection as an IP SAN, for IPv4 and IPv6.
func TestHandshakeIP(t *testing.T) {
	m, pool := newMinter(t, MinterOptions{})
	for _, ip := range []string{"127.0.0.1", "::1"} {
		la := net.JoinHostPort(ip, "0")
		if ln, err := net.Listen("tcp", la); err != nil {
			t.Logf("no %s here: %v", ip, err)
			if ip == "127.0.0.1" {
				t.Fatal(err)
			}
			continue
		} else {
			ln.Close()
		}
		addr := serveTLS(t, m, la)
		leaf, proto, err := handshake(t, addr, ip, []string{"h2", "http/1.1"}, pool)
		if err != nil {
			t.Fatalf("%s: %v", ip, err)
		}
		if proto != "h2" || len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP(ip)) {
			t.Errorf("%s: proto %q SANs %q %v", ip, proto, leaf.DNSNames, leaf.IPAddresses)
		}
	}
	// An IP literal sent as SNI (some clients do) gets an IP SAN too.
	c, err := m.ForName("10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if l := parseLeaf(t, c); len(l.IPAddresses) != 1 || l.IPAddresses[0].String() != "10.1.2.3" || len(l.DNSNames) != 0 {
		t.Errorf("IP in SNI: SANs %q %v", l.DNSNames, l.IPAddresses)
	}
	if _, err := m.Certificate(&tls.ClientHelloInfo{}); !errors.Is(err, ErrNoName) {
		t.Errorf("no SNI, no conn: %v", err)
	}
}

// TestLeafCappedByCA: a leaf never outlives the CA nor starts before it,
// a client verifies it, and a CA past its end mints nothing.
func TestLeafCappedByCA(t *testing.T) {
	now := time.Now()
	ca, _, _ := genCA(t, now, 2*time.Hour) // valid now-1h .. now+2h
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	m, err := NewMinter(ca, MinterOptions{Backdate: 3 * time.Hour, Now: func() time.Time { return *clock.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	leaf, _, err := handshake(t, serveTLS(t, m, ""), "soon.example", nil, pool)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.NotAfter.Equal(ca.Cert.NotAfter) || !leaf.NotBefore.Equal(ca.Cert.NotBefore) {
		t.Errorf("leaf %v..%v, CA %v..%v", leaf.NotBefore, leaf.NotAfter, ca.Cert.NotBefore, ca.Cert.NotAfter)
	}
	late := ca.Cert.NotAfter.Add(time.Second)
	clock.Store(&late)
	if _, err := m.ForName("late.example"); !errors.Is(err, ErrCAExpired) {
		t.Errorf("after the CA: %v", err)
	}
	if s := m.Stats(); s.MintErrors != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestCache: a second ask is a hit with the same leaf; a leaf with less
// than a third of its life left is minted again; the LRU keeps CacheSize
// leaves, dropping the least recently used.
func TestCache(t *testing.T) {
	now := time.Now()
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	m, _ := newMinter(t, MinterOptions{CacheSize: 3, Now: func() time.Time { return *clock.Load() }})
	a1, err := m.ForName("a.example")
	if err != nil {
		t.Fatal(err)
	}
	if a2, _ := m.ForName("A.EXAMPLE."); a2 != a1 {
		t.Error("the same name minted twice")
	}
	if s := m.Stats(); s.Hits != 1 || s.Misses != 1 || s.Mints != 1 || s.Size != 1 || s.MintTime <= 0 {
		t.Errorf("stats %+v", s)
	}
	// 24h leaf: fresh until 16h, minted again after.
	t15 := now.Add(15 * time.Hour)
	clock.Store(&t15)
	if a, _ := m.ForName("a.example"); a != a1 {
		t.Error("refreshed with 9h of 24h left")
	}
	t17 := now.Add(17 * time.Hour)
	clock.Store(&t17)
	a3, err := m.ForName("a.example")
	if err != nil || a3 == a1 || parseLeaf(t, a3).SerialNumber.Cmp(parseLeaf(t, a1).SerialNumber) == 0 {
		t.Fatalf("not refreshed with 7h of 24h left: %v", err)
	}
	if !parseLeaf(t, a3).NotAfter.After(parseLeaf(t, a1).NotAfter) {
		t.Error("the refreshed leaf ends no later")
	}
	// LRU: a, b, c; touch a; d evicts b.
	for _, n := range []string{"b.example", "c.example", "a.example", "d.example"} {
		if _, err := m.ForName(n); err != nil {
			t.Fatal(err)
		}
	}
	s := m.Stats()
	if s.Size != 3 || s.Evictions != 1 {
		t.Errorf("stats %+v, want size 3, 1 eviction", s)
	}
	before := s.Mints
	for _, n := range []string{"a.example", "c.example", "d.example"} {
		m.ForName(n)
	}
	if m.Stats().Mints != before {
		t.Error("a, c or d was evicted")
	}
	m.ForName("b.example")
	if m.Stats().Mints != before+1 {
		t.Error("b was not evicted")
	}
}

// TestMintOnce: 100 concurrent hellos for one name mint one leaf, and all
// get it; 100 for 10 names mint 10.
func TestMintOnce(t *testing.T) {
	m, _ := newMinter(t, MinterOptions{})
	for _, names := range []int{1, 10} {
		before := m.Stats().Mints
		var (
			start sync.WaitGroup
			wg    sync.WaitGroup
			mu    sync.Mutex
			got   = map[string]map[*tls.Certificate]bool{}
		)
		start.Add(1)
		for i := range 100 {
			name := "once" + strings.Repeat("x", names) + "-" + string(rune('a'+i%names)) + ".example"
			wg.Go(func() {
				start.Wait()
				c, err := m.Certificate(&tls.ClientHelloInfo{ServerName: name})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if got[name] == nil {
					got[name] = map[*tls.Certificate]bool{}
				}
				got[name][c] = true
				mu.Unlock()
			})
		}
		start.Done()
		wg.Wait()
		if n := m.Stats().Mints - before; n != uint64(names) {
			t.Errorf("%d names: %d mints", names, n)
		}
		for n, cs := range got {
			if len(cs) != 1 {
				t.Errorf("%s: %d different leaves", n, len(cs))
			}
		}
	}
}

// TestBadSNI: names that are not DNS names are refused before minting,
// and a client sending one gets no certificate (the handshake fails).
func TestBadSNI(t *testing.T) {
	good := map[string]string{
		"example.com":           "example.com",
		"EXAMPLE.com.":          "example.com",
		"localhost":             "localhost",
		"_dmarc.x-y.example":    "_dmarc.x-y.example",
		"xn--bcher-kva.example": "xn--bcher-kva.example",
		strings.Repeat("a", 63): strings.Repeat("a", 63),
		"1.2.3.4.5":             "1.2.3.4.5",
		longName(253):           longName(253),
		longName(253) + ".":     longName(253),
	}
	for in, want := range good {
		got, ip, err := ValidName(in)
		if err != nil || got != want || ip.IsValid() {
			t.Errorf("ValidName(%q) = %q, %v, %v; want %q", in, got, ip, err, want)
		}
	}
	for in, want := range map[string]netip.Addr{
		"10.0.0.1": netip.MustParseAddr("10.0.0.1"), "10.0.0.1.": netip.MustParseAddr("10.0.0.1"),
		"::ffff:10.0.0.1": netip.MustParseAddr("10.0.0.1"), "2001:db8::1": netip.MustParseAddr("2001:db8::1"),
	} {
		if _, ip, err := ValidName(in); err != nil || ip != want {
			t.Errorf("ValidName(%q) = %v, %v; want %v", in, ip, err, want)
		}
	}
	bad := []string{"", ".", "..", "a..b", ".a", "a b.example", "a\x00.example", "a\n.example", "*.example.com",
		"-a.example", "a-.example", "a/b", "a:80", "fe80::1%eth0", "ex\u00e4mple.com", "a\x7f", strings.Repeat("a", 64),
		longName(254), longName(253) + "..", strings.Repeat("x", 100000)}
	m, pool := newMinter(t, MinterOptions{})
	for _, in := range bad {
		if _, _, err := ValidName(in); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidName(%.40q): %v", in, err)
		}
		if in == "" {
			continue
		}
		_, err := m.ForName(in)
		if !errors.Is(err, ErrBadName) || len(err.Error()) > 256 {
			t.Errorf("ForName(%.40q): %.300v", in, err)
		}
	}
	addr := serveTLS(t, m, "")
	for _, in := range []string{"a b.example", "bad*.example", "a\x01b"} {
		_, _, err := handshake(t, addr, in, nil, pool)
		// The server refuses (an alert), not the client.
		if err == nil || !strings.Contains(err.Error(), "remote error") {
			t.Errorf("handshake for %q: %v, want the server's alert", in, err)
		}
	}
	if s := m.Stats(); s.Mints != 0 || s.Size != 0 {
		t.Errorf("stats %+v: bad names minted", s)
	}
}

// parseLeaf parses the leaf of c (the Minter leaves Leaf nil).
func parseLeaf(t testing.TB, c *tls.Certificate) *x509.Certificate {
	t.Helper()
	if len(c.Certificate) != 1 || c.Leaf != nil {
		t.Fatalf("%d certificates in the chain, Leaf %v; want the leaf alone", len(c.Certificate), c.Leaf != nil)
	}
	l, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// longName is a valid DNS name of n bytes.
func longName(n int) string {
	var b strings.Builder
	for b.Len() < n {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		l := min(63, n-b.Len())
		b.WriteString(strings.Repeat("a", l))
	}
	return b.String()
}

func TestNewMinterOptions(t *testing.T) {
	ca, _, _ := genCA(t, time.Now(), 0)
	for _, o := range []MinterOptions{{Validity: time.Second}, {Backdate: -1}, {CacheSize: -1}} {
		if _, err := NewMinter(ca, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if _, err := NewMinter(nil, MinterOptions{}); err == nil {
		t.Error("nil CA accepted")
	}
	cfg := ServerConfig(&Minter{})
	if cfg.MinVersion != tls.VersionTLS12 || len(cfg.NextProtos) != 2 || cfg.NextProtos[0] != "h2" || cfg.NextProtos[1] != "http/1.1" {
		t.Errorf("config %+v", cfg)
	}
}

// FuzzValidName: whatever a ClientHello says, an accepted name is short,
// plain lower-case ASCII, stable under a second check, and the leaf
// minted for it verifies for that name against the CA.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"example.com", "A.b.", "10.0.0.1", "::1", "a..b", "_x.y", "xn--d", "a b", "\x00", "1.2.3.4.", "-a", "a-"} {
		f.Add(s)
	}
	m, pool := newMinter(f, MinterOptions{CacheSize: 16})
	f.Fuzz(func(t *testing.T, s string) {
		n, ip, err := ValidName(s)
		if err != nil {
			if !errors.Is(err, ErrBadName) || len(err.Error()) > 256 {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		if ip.IsValid() {
			if n != "" {
				t.Fatalf("%q: name %q and IP %v", s, n, ip)
			}
			return
		}
		if len(n) == 0 || len(n) > maxNameLen {
			t.Fatalf("%q: accepted %q", s, n)
		}
		for i := 0; i < len(n); i++ {
			c := n[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("%q: accepted %q with byte %#x", s, n, c)
			}
		}
		if n2, ip2, err := ValidName(n); err != nil || n2 != n || ip2.IsValid() {
			t.Fatalf("%q: %q checks again as %q, %v, %v", s, n, n2, ip2, err)
		}
		c, err := m.ForName(s)
		if err != nil {
			t.Fatalf("%q: mint: %v", s, err)
		}
		if _, err := parseLeaf(t, c).Verify(x509.VerifyOptions{DNSName: n, Roots: pool}); err != nil {
			t.Fatalf("%q: leaf does not verify for %q: %v", s, n, err)
		}
	})
}

// TestCacheMemory: a cached leaf holds its DER and little else (the
// parsed certificate is not kept), so the default 10,000 leaves stay
// under 20 MiB: under 2 KiB of live heap each.
func TestCacheMemory(t *testing.T) {
	m, _ := newMinter(t, MinterOptions{})
	const n = 3000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		if _, err := m.ForName("name-" + strconv.Itoa(i) + ".a-longer-domain-name.example.com"); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes of heap per cached leaf", per)
	if per > 2048 || m.Stats().Size != n {
		t.Errorf("%d bytes per cached leaf (want ≤ 2048), size %d", per, m.Stats().Size)
	}
	runtime.KeepAlive(m)
}
