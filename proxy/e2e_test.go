package proxy

import (
	"fmt"
	"io"
	"net"
	"testing"
)

func TestE2EConnectHalfCloseTinyproxy(t *testing.T) {
	addr := tcpOrigin(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes: %s", len(b), b)
	})
	e := newEnv(t, envOptions{upstreams: 1})
	c, br := e.dialConnect(t, addr)
	io.WriteString(c, "hello")
	c.CloseWrite()
	b, err := io.ReadAll(br)
	t.Logf("%q %v", b, err)
}
