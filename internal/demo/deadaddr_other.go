//go:build !linux

package demo

import (
	"fmt"
	"net"
)

// reserveDeadAddr returns a loopback address where nothing listens: a port
// that was free a moment ago. Unlike on Linux the port is not held, so in
// theory another program could take it meanwhile.
func reserveDeadAddr() (addr string, release func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("reserve dead port: %w", err)
	}
	addr = ln.Addr().String()
	ln.Close()
	return addr, func() {}, nil
}
