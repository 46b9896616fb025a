// Package intercept holds what the two transparent interception modes
// share; the modes themselves are its subpackages:
//
//   - local: cgroup connect4/6 hooks steer local processes' connects to a
//     loopback listener (intercept/local).
//   - gateway: TC programs and policy routing steer forwarded LAN flows to
//     an IP_TRANSPARENT listener (intercept/gateway).
//
// Each mode takes typed options (prefixes, ports, marks, paths), sets up
// the data plane from package bpf, accepts the steered connections and
// hands each one, with its original destination, to a Handler. Neither
// reads configuration: the agent resolves it and passes the values in.
package intercept

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Handler serves one intercepted connection whose client believes it is
// talking to orig (*proxy.Server is one). It returns when the connection
// is done.
type Handler interface {
	ServeTransparent(c net.Conn, orig netip.AddrPort)
}

// Serve hands every connection ln accepts to h, with the original
// destination origOf finds for it, each on its own goroutine; a connection
// without one is closed. It returns when ln is closed. what names the mode
// in log lines.
func Serve(ln net.Listener, h Handler, log *slog.Logger, what string, origOf func(net.Conn) (netip.AddrPort, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("accept "+what+" connection", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		orig, err := origOf(c)
		if err != nil {
			log.Debug("connection without an original destination", "client", c.RemoteAddr().String(), "err", err)
			c.Close()
			continue
		}
		go h.ServeTransparent(c, orig)
	}
}

// UpstreamPrefixes are the addresses of the upstream proxies at addrs
// ("host:port", or a bare host), one /32 or /128 each, without repeats: the
// modes never intercept them. A host name is resolved (2 s each); one that
// does not resolve is logged and left out.
func UpstreamPrefixes(ctx context.Context, log *slog.Logger, addrs []string) []netip.Prefix {
	seen := map[netip.Addr]bool{}
	var out []netip.Prefix
	add := func(ip netip.Addr) {
		ip = ip.Unmap()
		if !seen[ip] {
			seen[ip] = true
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	for _, addr := range addrs {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			add(ip)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ips, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
		cancel()
		if err != nil {
			log.Warn("cannot resolve upstream to exclude it from the redirect", "upstream", addr, "err", err)
		}
		for _, ip := range ips {
			add(ip)
		}
	}
	return out
}
