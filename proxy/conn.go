package proxy

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Reasons a client connection is refused at accept (RefusedConn hook).
const (
	RefusedGlobalLimit = "global_limit" // Options.MaxConns connections are open
	RefusedClientLimit = "client_limit" // the client's address has MaxConnsPerClient open
)

// clientBufSize is the size of a client connection's pooled reader: a
// request head is read through it, and a TLS ClientHello record must fit
// for the transparent path's SNI peek.
const clientBufSize = maxTLSRecord + 512

// keepAliveGrace is how long a keep-alive connection waits for its next
// request with its buffers before it gives them back to the pool and
// waits (up to idleTimeout) without any.
const keepAliveGrace = time.Second

// connBufs pools the read and write buffers of client connections: a
// connection holds them only while it has a request in hand, never while
// it waits for one or relays a tunnel.
type connBufs struct {
	r, w sync.Pool
}

func newConnBufs() *connBufs {
	b := &connBufs{}
	b.r.New = func() any { return bufio.NewReaderSize(nil, clientBufSize) }
	b.w.New = func() any { return bufio.NewWriterSize(nil, 16<<10) }
	return b
}

// clientSource is what a client connection's reader reads: the byte that
// ended the wait for a request (awaitData), then the connection.
type clientSource clientConn

func (r *clientSource) Read(p []byte) (int, error) {
	if r.hasFirst && len(p) > 0 {
		p[0], r.hasFirst = r.first[0], false
		return 1, nil
	}
	return r.c.Read(p)
}

// attachBufs gives cc its reader and writer from the pool, the reader
// already holding the byte awaitData read.
func (cc *clientConn) attachBufs() {
	if cc.br == nil {
		cc.br = cc.bufs.r.Get().(*bufio.Reader)
		cc.br.Reset((*clientSource)(cc))
		if cc.hasFirst {
			_, _ = cc.br.Peek(1) // never blocks: the byte is at hand
		}
	}
	if cc.bw == nil {
		cc.bw = cc.bufs.w.Get().(*bufio.Writer)
		cc.bw.Reset(cc.c)
	}
}

// releaseBufs returns cc's buffers to the pool when they hold nothing: a
// reader with unread bytes (a pipelined request) stays. Unflushed output
// is flushed first.
func (cc *clientConn) releaseBufs() {
	if cc.bw != nil {
		if cc.bw.Buffered() > 0 && cc.bw.Flush() != nil {
			return
		}
		cc.bw.Reset(nil)
		cc.bufs.w.Put(cc.bw)
		cc.bw = nil
	}
	if cc.br != nil && cc.br.Buffered() == 0 && !cc.hasFirst {
		cc.br.Reset(nil)
		cc.bufs.r.Put(cc.br)
		cc.br = nil
	}
}

// dropBufs returns cc's buffers to the pool, whatever they hold: the
// connection is done.
func (cc *clientConn) dropBufs() {
	if cc.bw != nil {
		cc.bw.Reset(nil)
		cc.bufs.w.Put(cc.bw)
		cc.bw = nil
	}
	if cc.br != nil {
		cc.br.Reset(nil)
		cc.bufs.r.Put(cc.br)
		cc.br = nil
	}
}

// detach hands the connection over to a relay: it flushes what was
// written, returns the buffers to the pool and returns a copy of the
// bytes the client sent beyond what was read (nil when none).
func (cc *clientConn) detach() []byte {
	var pre []byte
	if cc.br != nil && cc.br.Buffered() > 0 {
		b, _ := cc.br.Peek(cc.br.Buffered())
		pre = append([]byte(nil), b...)
	}
	if cc.bw != nil {
		_ = cc.bw.Flush()
	}
	cc.dropBufs()
	return pre
}

// awaitData waits until the client sends a byte or deadline passes. It
// waits without buffers unless some are already filled: reading one byte
// into the connection's own one-byte array; the buffers are taken from
// the pool only when it arrives.
func (cc *clientConn) awaitData(deadline time.Time) error {
	if cc.br != nil && cc.br.Buffered() > 0 {
		return nil
	}
	cc.releaseBufs()
	_ = cc.c.SetReadDeadline(deadline)
	for {
		n, err := cc.c.Read(cc.first[:])
		if n == 1 {
			cc.hasFirst = true
			cc.attachBufs()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// connLimits counts open client connections, in all and per client
// address, for Options.MaxConns and MaxConnsPerClient. Guarded by
// Server.mu.
type connLimits struct {
	perClient map[netip.Prefix]int
}

// clientKey is the address a per-client limit counts against: the IPv4
// address, or the /64 of an IPv6 one (a single host often has a whole
// /64). Unknown addresses share one key.
func clientKey(a net.Addr) netip.Prefix {
	var ip netip.Addr
	switch v := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(v.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	switch {
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	case ip.Is6():
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.Prefix{}
}

// closeRefused ends a connection refused at a limit with a reset: no
// lingering socket, no TIME_WAIT on the agent's side.
func closeRefused(c net.Conn) {
	resetClose(c)
	c.Close()
}

var _ io.Reader = (*clientSource)(nil)
