package proxy

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseHostIP: any string either is no address or one address whose
// canonical spelling, and its 32-bit decimal spelling for IPv4, read back
// the same; a canonical dotted quad or IPv6 literal is always read as
// netip reads it; a loopback result is refused by a loopback deny-list
// under the same spelling. Never panics.
func FuzzParseHostIP(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1", "0x", "::ffff:127.0.0.1",
		"fe80::1%eth0", "1.2.3.4.5", "08.1", "0x100000000", "99999999999999999999", "a.b", ""} {
		f.Add(s)
	}
	deny := &DestinationPolicy{Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := ParseHostIP(s)
		if want, err := netip.ParseAddr(s); err == nil && !strings.Contains(s, "%") && (want.Is6() || !hasLeadingZero(s)) {
			if !ok || a != want.Unmap() {
				t.Fatalf("%q: got %v %v, netip reads %v", s, a, ok, want)
			}
		}
		if !ok {
			return
		}
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			t.Fatalf("%q: %v", s, a)
		}
		if b, ok2 := ParseHostIP(a.String()); !ok2 || b != a {
			t.Fatalf("%q → %v does not read back: %v %v", s, a, b, ok2)
		}
		if a.Is4() {
			b4 := a.As4()
			n := strconv.FormatUint(uint64(binary.BigEndian.Uint32(b4[:])), 10)
			if b, ok2 := ParseHostIP(n); !ok2 || b != a {
				t.Fatalf("%q → %v: decimal %s reads %v %v", s, a, n, b, ok2)
			}
		}
		if a.IsLoopback() && deny.refuse(s, 80) == "" {
			t.Fatalf("%q reads as loopback %v but is not refused", s, a)
		}
	})
}

func hasLeadingZero(s string) bool {
	for _, p := range strings.Split(s, ".") {
		if len(p) > 1 && p[0] == '0' {
			return true
		}
	}
	return false
}

// FuzzHostIPSpellings builds an inet_aton spelling of v (one to four
// parts, each in decimal, octal or hex as bases picks) and checks that it
// reads as v.
func FuzzHostIPSpellings(f *testing.F) {
	f.Add(uint32(0x7f000001), uint8(1), uint8(0))
	f.Add(uint32(0x7f000001), uint8(2), uint8(0b01))
	f.Add(uint32(0xa9fea9fe), uint8(3), uint8(0b10_01_00))
	f.Add(uint32(0), uint8(4), uint8(0xff))
	f.Fuzz(func(t *testing.T, v uint32, n, bases uint8) {
		parts := int(n%4) + 1
		var vals []uint64
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], v)
		for i := 0; i < parts-1; i++ {
			vals = append(vals, uint64(b[i]))
		}
		var last uint64
		for i := parts - 1; i < 4; i++ {
			last = last<<8 | uint64(b[i])
		}
		vals = append(vals, last)
		spell := make([]string, len(vals))
		for i, x := range vals {
			switch (bases >> (2 * i)) & 3 {
			case 1:
				spell[i] = "0" + strconv.FormatUint(x, 8)
			case 2:
				spell[i] = "0x" + strconv.FormatUint(x, 16)
			case 3:
				spell[i] = "0X" + strings.ToUpper(strconv.FormatUint(x, 16))
			default:
				spell[i] = strconv.FormatUint(x, 10)
			}
		}
		s := strings.Join(spell, ".")
		a, ok := ParseHostIP(s)
		if want := netip.AddrFrom4(b); !ok || a != want {
			t.Fatalf("%q: got %v %v, want %v", s, a, ok, want)
		}
	})
}
