//go:build !unix

package proxy

import (
	"net"
	"sync"
)

// rawReader is the raw-socket reader of rawread_unix.go; elsewhere relay
// reads through the connection, holding a buffer while it waits.
func rawReader(net.Conn, *sync.Pool) func(use func([]byte) error) (int, error) { return nil }
