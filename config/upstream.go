package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// upstream is one parsed ipList entry; port 0 means "the target's
// defaultProxyPort".
type upstream struct {
	host     string
	port     int
	user     string
	pass     string
	hasCreds bool
}

// parseUpstream reads an ipList entry: host, host:port, [v6], [v6]:port,
// or http://[user:pass@]host[:port] with percent-encoded user and password.
// Its errors never contain credentials.
// parseIPList parses an ipList, reporting each bad entry under label; ok
// is false when any entry was bad.
func parseIPList(p *problems, label string, list []string) (out []upstream, ok bool) {
	ok = true
	for j, e := range list {
		u, err := parseUpstream(e)
		if err != nil {
			p.add("%s: ipList[%d]: %v", label, j, err)
			ok = false
			continue
		}
		out = append(out, u)
	}
	return out, ok
}

func parseUpstream(entry string) (upstream, error) {
	e := strings.TrimSpace(entry)
	if e == "" {
		return upstream{}, errors.New("empty entry")
	}
	if scheme, _, ok := strings.Cut(e, "://"); ok {
		return parseUpstreamURL(e, scheme)
	}
	if strings.Contains(e, "@") {
		return upstream{}, errors.New("credentials are only accepted in the http://user:password@host:port form")
	}
	var host, portStr string
	switch {
	case strings.HasPrefix(e, "["):
		end := strings.Index(e, "]")
		if end < 0 {
			return upstream{}, fmt.Errorf("%q: missing ] after an IPv6 address", e)
		}
		host, portStr = e[1:end], e[end+1:]
		if portStr != "" {
			if !strings.HasPrefix(portStr, ":") {
				return upstream{}, fmt.Errorf("%q: want [ipv6]:port", e)
			}
			portStr = portStr[1:]
			if portStr == "" {
				return upstream{}, fmt.Errorf("%q: empty port", e)
			}
		}
		if ip := net.ParseIP(host); ip == nil || !strings.Contains(host, ":") {
			return upstream{}, fmt.Errorf("%q: not an IPv6 address in brackets", e)
		}
	case strings.Count(e, ":") > 1:
		return upstream{}, errors.New("more than one ':' (an IPv6 address needs brackets, e.g. [2001:db8::1]:3128)")
	case strings.Contains(e, ":"):
		host, portStr, _ = strings.Cut(e, ":")
		if portStr == "" {
			return upstream{}, fmt.Errorf("%q: empty port", e)
		}
	default:
		host = e
	}
	if !strings.Contains(host, ":") {
		if err := checkHost(host); err != nil {
			return upstream{}, err
		}
	}
	u := upstream{host: host}
	if portStr != "" {
		port, err := parsePort(portStr)
		if err != nil {
			return upstream{}, fmt.Errorf("host %q: %w", host, err)
		}
		u.port = port
	}
	return u, nil
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

func parseUpstreamURL(e, scheme string) (upstream, error) {
	if !schemeRE.MatchString(scheme) {
		return upstream{}, fmt.Errorf("%q is not a valid URL", redact(e))
	}
	if !strings.EqualFold(scheme, "http") {
		return upstream{}, fmt.Errorf("scheme %q is not supported: upstream proxies are plain HTTP proxies (http://host:port)", scheme)
	}
	safe := redact(e)
	u, err := url.Parse(e)
	if err != nil {
		return upstream{}, fmt.Errorf("%q is not a valid URL (percent-encode special characters in the user name and password)", safe)
	}
	if u.Host == "" || u.Opaque != "" {
		return upstream{}, fmt.Errorf("%q: missing host", safe)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return upstream{}, fmt.Errorf("%q: want http://[user:password@]host[:port] with no path, query or fragment (percent-encode / ? # in credentials)", safe)
	}
	host := u.Hostname()
	if strings.Contains(host, ":") && net.ParseIP(host) == nil {
		return upstream{}, fmt.Errorf("%q: bad IPv6 address", safe)
	}
	if !strings.Contains(host, ":") {
		if err := checkHost(host); err != nil {
			return upstream{}, err
		}
	}
	out := upstream{host: host}
	if ps := u.Port(); ps != "" {
		port, err := parsePort(ps)
		if err != nil {
			return upstream{}, fmt.Errorf("host %q: %w", host, err)
		}
		out.port = port
	} else if strings.HasSuffix(u.Host, ":") {
		return upstream{}, fmt.Errorf("%q: empty port", safe)
	}
	if u.User != nil {
		out.hasCreds = true
		out.user = u.User.Username()
		out.pass, _ = u.User.Password()
	}
	return out, nil
}

// redact hides the user-info part of an entry: http://***@host:port.
func redact(e string) string {
	at := strings.LastIndex(e, "@")
	if at < 0 {
		return e
	}
	start := 0
	if i := strings.Index(e, "://"); i >= 0 && i < at && schemeRE.MatchString(e[:i]) {
		start = i + 3
	}
	return e[:start] + "***" + e[at:]
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, errors.New("port must be a number from 1 to 65535")
	}
	return n, nil
}

// checkHost accepts IPv4 addresses and DNS names.
func checkHost(h string) error {
	if h == "" {
		return errors.New("missing host")
	}
	for _, r := range h {
		if !(r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Errorf("%q is not a host name or IP address", h)
		}
	}
	return nil
}
