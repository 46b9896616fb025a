package proxy

import (
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// DestinationPolicy refuses destinations no client may reach through the
// agent, whichever target matches: by default (the agent's
// server.denyDestinations) loopback, link-local and cloud metadata
// addresses, and the agent's own listeners. It is checked at admission,
// before any IP is acquired. Host names are checked as written: the agent
// never resolves them (the upstream proxy does), so only IP literals, in
// every spelling a resolver accepts, and the listed names are caught.
type DestinationPolicy struct {
	Deny      []netip.Prefix
	DenyNames []string // lower case; each also covers its subdomains
	// Allow and AllowNames carve exceptions out of Deny and DenyNames
	// (never out of the agent's own listeners).
	Allow      []netip.Prefix
	AllowNames []string
	// OwnPorts are the agent's listening ports: a destination on one of
	// them at a loopback, unspecified or Local address is the agent itself.
	OwnPorts []uint16
	Local    []netip.Addr
}

// refuse returns why host:port is refused, or "" when it is not. host is
// a URL host name without brackets.
func (p *DestinationPolicy) refuse(host string, port int) string {
	if p == nil {
		return ""
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	addr, isIP := ParseHostIP(h)
	if isIP {
		if p.own(addr, port) {
			return "the agent's own listener " + netip.AddrPortFrom(addr, uint16(port)).String()
		}
		if containsAddr(p.Allow, addr) {
			return ""
		}
		for _, pf := range p.Deny {
			if pf.Contains(addr) {
				return addr.String() + " is in " + pf.String()
			}
		}
		return ""
	}
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		for _, pt := range p.OwnPorts {
			if int(pt) == port {
				return "the agent's own listener " + h + ":" + strconv.Itoa(port)
			}
		}
	}
	if nameIn(p.AllowNames, h) {
		return ""
	}
	for _, n := range p.DenyNames {
		if nameIn([]string{n}, h) {
			return h + " is under " + n
		}
	}
	return ""
}

func (p *DestinationPolicy) own(addr netip.Addr, port int) bool {
	for _, pt := range p.OwnPorts {
		if int(pt) != port {
			continue
		}
		if addr.IsLoopback() || addr.IsUnspecified() {
			return true
		}
		for _, l := range p.Local {
			if l.Unmap().WithZone("") == addr {
				return true
			}
		}
	}
	return false
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, pf := range ps {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

// nameIn reports whether h is one of names or a subdomain of one.
func nameIn(names []string, h string) bool {
	for _, n := range names {
		if h == n || (strings.HasSuffix(h, n) && h[len(h)-len(n)-1] == '.') {
			return true
		}
	}
	return false
}

// HostList matches hosts as the destination policy does: names with
// their subdomains, IP addresses in every spelling ParseHostIP reads, and
// regexes (anchored by whoever compiled them) against the whole host.
type HostList struct {
	Names []string // lower case, no trailing dot
	Addrs []netip.Addr
	Regex []*regexp.Regexp
}

// Has reports whether host (a name or IP literal; brackets, case and a
// trailing dot do not matter) is on the list.
func (l *HostList) Has(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if a, ok := ParseHostIP(h); ok {
		if slices.Contains(l.Addrs, a) {
			return true
		}
	} else if nameIn(l.Names, h) {
		return true
	}
	for _, re := range l.Regex {
		if re.MatchString(h) {
			return true
		}
	}
	return false
}

// ParseHostIP reads host as a resolver would an address literal: IPv6
// (brackets already removed, zone ignored, IPv4-mapped forms unmapped to
// IPv4) and IPv4 as inet_aton(3) does, in one to four parts, each decimal,
// octal (leading 0) or hex (0x): 127.0.0.1, 127.1, 2130706433, 0x7f.1,
// 0177.0.0.1. ok is false for anything else (a name).
func ParseHostIP(host string) (addr netip.Addr, ok bool) {
	if strings.Contains(host, ":") {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.Addr{}, false
		}
		return a.WithZone("").Unmap(), true
	}
	parts := strings.Split(host, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var vals [4]uint64
	for i, s := range parts {
		v, ok := parseInetPart(s)
		if !ok {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	n := len(parts)
	for i := 0; i < n-1; i++ {
		if vals[i] > 0xff {
			return netip.Addr{}, false
		}
	}
	last := vals[n-1]
	if last >= 1<<(8*(5-n)) {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i := 0; i < n-1; i++ {
		b[i] = byte(vals[i])
	}
	for i := 3; i >= n-1; i-- {
		b[i] = byte(last)
		last >>= 8
	}
	return netip.AddrFrom4(b), true
}

// parseInetPart parses one inet_aton part: 0x/0X hex (digits may be
// empty, as glibc allows), leading-0 octal, or decimal. Values past 32 bits
// are refused.
func parseInetPart(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	base := 10
	switch {
	case len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'):
		base, s = 16, s[2:]
		if s == "" {
			return 0, true
		}
	case len(s) > 1 && s[0] == '0':
		base, s = 8, s[1:]
	}
	if strings.HasPrefix(s, "+") || strings.HasPrefix(s, "-") {
		return 0, false
	}
	v, err := strconv.ParseUint(s, base, 64)
	if err != nil || v > 0xffffffff {
		return 0, false
	}
	return v, true
}

// deniedDestination writes the 403 for a refused destination.
func (s *Server) deniedDestination(cc *clientConn, h *RequestHead, keep bool, reason string) {
	s.log.Info("destination refused", "client", cc.c.RemoteAddr().String(), "destination", h.Target, "reason", reason)
	_ = writeJSON(cc.bw, 403, h.Minor, keep, map[string]any{"error": "destination_denied",
		"detail": "Destination refused: " + reason + " (server.denyDestinations)"})
}

// urlPort is the URL's port, defaulting by scheme.
func urlPort(u interface{ Port() string }, scheme string) int {
	if p, err := strconv.Atoi(u.Port()); err == nil {
		return p
	}
	if scheme == "https" {
		return 443
	}
	return 80
}
