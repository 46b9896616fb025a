package mitm

import (
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Defaults of MinterOptions.
const (
	DefaultLeafValidity = 24 * time.Hour
	DefaultBackdate     = time.Hour
	DefaultCacheSize    = 10000
)

// maxNameLen is the longest DNS name accepted (RFC 1035, without the
// trailing dot); maxLabelLen the longest label.
const (
	maxNameLen  = 253
	maxLabelLen = 63
)

// Sentinels of the Minter's refusals.
var (
	// ErrBadName: the server name is not a DNS name (or IP) we mint for.
	ErrBadName = errors.New("invalid server name")
	// ErrNoName: no SNI and no local IP address to name the leaf after.
	ErrNoName = errors.New("no server name and no local IP address")
)

// MinterOptions are NewMinter's options; the zero value is usable.
type MinterOptions struct {
	// Validity of a leaf; default DefaultLeafValidity. A leaf never
	// outlives the CA, whatever this says.
	Validity time.Duration
	// Backdate moves NotBefore back for clients with a slow clock;
	// default DefaultBackdate (never before the CA's NotBefore).
	Backdate time.Duration
	// CacheSize bounds the cached leaves (LRU); default DefaultCacheSize.
	CacheSize int
	// Now defaults to time.Now.
	Now func() time.Time
}

// Stats are the Minter's counters since NewMinter.
type Stats struct {
	Hits       uint64        // served from the cache
	Misses     uint64        // not in the cache (or due for refresh): minted or waited for a mint
	Mints      uint64        // leaves signed
	MintErrors uint64        // mints that failed
	Evictions  uint64        // leaves dropped by the LRU bound
	MintTime   time.Duration // total time spent minting
	Size       int           // leaves in the cache now
}

// Minter signs leaf certificates with the CA for the names clients ask
// for. Leaves share one ECDSA P-256 key made by NewMinter (minting is then
// one signature; see docs/interception.md). It is safe for concurrent use.
type Minter struct {
	ca         *CA
	opts       MinterOptions
	leafKey    crypto.Signer
	perLeafKey bool // a new key per leaf (benchmarks compare the two)

	sf    singleflight.Group
	mu    sync.Mutex
	lru   *list.List // of *entry, front most recent
	items map[string]*list.Element

	hits, misses, mints, mintErrors, evictions atomic.Uint64
	mintNanos                                  atomic.Int64
}

type entry struct {
	key       string
	cert      *tls.Certificate
	refreshAt time.Time
}

// NewMinter returns a Minter signing with ca.
func NewMinter(ca *CA, opts MinterOptions) (*Minter, error) {
	if ca == nil || ca.Cert == nil || ca.key == nil {
		return nil, errors.New("new minter: no CA")
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultLeafValidity
	}
	if opts.Backdate == 0 {
		opts.Backdate = DefaultBackdate
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = DefaultCacheSize
	}
	if opts.Validity < time.Minute || opts.Backdate < 0 || opts.CacheSize < 1 {
		return nil, fmt.Errorf("new minter: validity %v (at least 1m), backdate %v, cache size %d (at least 1)",
			opts.Validity, opts.Backdate, opts.CacheSize)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}
	return &Minter{ca: ca, opts: opts, leafKey: key, lru: list.New(), items: map[string]*list.Element{}}, nil
}

// Certificate is a tls.Config.GetCertificate: the leaf for the client's
// SNI, or without SNI for the local IP address of the connection.
func (m *Minter) Certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if hello.ServerName != "" {
		return m.ForName(hello.ServerName)
	}
	if hello.Conn != nil {
		if a, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				return m.ForIP(ip)
			}
		}
	}
	return nil, ErrNoName
}

// ForName is the leaf for a server name (a DNS name, or an IP literal as
// some clients send in SNI). Names are checked with ValidName.
func (m *Minter) ForName(name string) (*tls.Certificate, error) {
	n, ip, err := ValidName(name)
	if err != nil {
		return nil, err
	}
	if ip.IsValid() {
		return m.ForIP(ip)
	}
	return m.get("dns:"+n, n, netip.Addr{})
}

// ForIP is the leaf for an IP address (an IP SAN), for clients that send
// no SNI; the proxy passes the original destination.
func (m *Minter) ForIP(ip netip.Addr) (*tls.Certificate, error) {
	ip = ip.Unmap().WithZone("")
	if !ip.IsValid() {
		return nil, ErrNoName
	}
	return m.get("ip:"+ip.String(), "", ip)
}

func (m *Minter) lookup(key string, now time.Time) *tls.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.items[key]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if !now.Before(e.refreshAt) {
		return nil
	}
	m.lru.MoveToFront(el)
	return e.cert
}

func (m *Minter) get(key, name string, ip netip.Addr) (*tls.Certificate, error) {
	if c := m.lookup(key, m.opts.Now()); c != nil {
		m.hits.Add(1)
		return c, nil
	}
	m.misses.Add(1)
	v, err, _ := m.sf.Do(key, func() (any, error) {
		// A mint that finished between lookup and Do is reused.
		now := m.opts.Now()
		if c := m.lookup(key, now); c != nil {
			return c, nil
		}
		start := time.Now()
		c, refreshAt, err := m.mint(name, ip, now)
		m.mintNanos.Add(int64(time.Since(start)))
		if err != nil {
			m.mintErrors.Add(1)
			return nil, err
		}
		m.mints.Add(1)
		m.store(key, c, refreshAt)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

func (m *Minter) store(key string, c *tls.Certificate, refreshAt time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.items[key]; ok {
		el.Value = &entry{key: key, cert: c, refreshAt: refreshAt}
		m.lru.MoveToFront(el)
		return
	}
	m.items[key] = m.lru.PushFront(&entry{key: key, cert: c, refreshAt: refreshAt})
	for m.lru.Len() > m.opts.CacheSize {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.items, old.Value.(*entry).key)
		m.evictions.Add(1)
	}
}

// mint signs one leaf valid from now-Backdate (not before the CA's
// NotBefore) to now+Validity (not after the CA's NotAfter). It is due for
// refresh when a third of its remaining life is left.
func (m *Minter) mint(name string, ip netip.Addr, now time.Time) (*tls.Certificate, time.Time, error) {
	ca := m.ca.Cert
	notBefore := now.Add(-m.opts.Backdate)
	if notBefore.Before(ca.NotBefore) {
		notBefore = ca.NotBefore
	}
	notAfter := now.Add(m.opts.Validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	if !notAfter.After(now) {
		return nil, time.Time{}, fmt.Errorf("mint leaf: %w (CA valid until %s)", ErrCAExpired, ca.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, time.Time{}, err
	}
	key := m.leafKey
	if m.perLeafKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("generate leaf key: %w", err)
		}
		key = k
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip.IsValid() {
		tmpl.Subject = pkix.Name{CommonName: ip.String()}
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	} else {
		tmpl.Subject = pkix.Name{CommonName: name}
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), m.ca.key)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("sign leaf for %s: %w", tmpl.Subject.CommonName, err)
	}
	// Leaf stays nil: crypto/tls does not need it to serve, and the
	// parsed form would triple what a cached leaf holds.
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return c, now.Add(notAfter.Sub(now) * 2 / 3), nil
}

// Stats returns the counters.
func (m *Minter) Stats() Stats {
	m.mu.Lock()
	size := m.lru.Len()
	m.mu.Unlock()
	return Stats{
		Hits:       m.hits.Load(),
		Misses:     m.misses.Load(),
		Mints:      m.mints.Load(),
		MintErrors: m.mintErrors.Load(),
		Evictions:  m.evictions.Load(),
		MintTime:   time.Duration(m.mintNanos.Load()),
		Size:       size,
	}
}

// ValidName checks a server name from a ClientHello, which is hostile
// input: at most 253 bytes (one trailing dot allowed and dropped), labels
// of 1 to 63 letters, digits, '-' (not first or last) or '_', nothing
// else (no control bytes, no spaces, no wildcards, no non-ASCII: clients
// send IDNs as xn-- labels). It returns the name lower-cased, or the IP
// when the name is an IP literal.
func ValidName(s string) (string, netip.Addr, error) {
	if len(s) > maxNameLen+1 {
		return "", netip.Addr{}, fmt.Errorf("check server name %s: %w (longer than %d bytes)", quoteBounded(s), ErrBadName, maxNameLen)
	}
	n := s
	if len(n) > 0 && n[len(n)-1] == '.' {
		n = n[:len(n)-1]
	}
	if ip, err := netip.ParseAddr(n); err == nil && ip.Zone() == "" {
		return "", ip.Unmap(), nil
	}
	if n == "" || len(n) > maxNameLen {
		return "", netip.Addr{}, fmt.Errorf("check server name %s: %w (empty or too long)", quoteBounded(s), ErrBadName)
	}
	b := []byte(n)
	start := 0
	for i := 0; i <= len(b); i++ {
		if i == len(b) || b[i] == '.' {
			l := b[start:i]
			if len(l) == 0 || len(l) > maxLabelLen || l[0] == '-' || l[len(l)-1] == '-' {
				return "", netip.Addr{}, fmt.Errorf("check server name %s: %w (bad label at byte %d)", quoteBounded(s), ErrBadName, start)
			}
			start = i + 1
			continue
		}
		c := b[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		case 'A' <= c && c <= 'Z':
			b[i] = c + ('a' - 'A')
		default:
			return "", netip.Addr{}, fmt.Errorf("check server name %s: %w (byte 0x%02x)", quoteBounded(s), ErrBadName, c)
		}
	}
	return string(b), netip.Addr{}, nil
}

// quoteBounded quotes at most 40 bytes of hostile input for an error
// (at most 165 bytes quoted).
func quoteBounded(s string) string {
	if len(s) > 40 {
		return strconv.Quote(s[:40]) + "…"
	}
	return strconv.Quote(s)
}

// ServerConfig is the tls.Config that serves clients with m's leaves:
// TLS 1.2 or later, ALPN h2 then http/1.1.
func ServerConfig(m *Minter) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.Certificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}
