package demo

import (
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// reserveDeadAddr returns a loopback address where nothing listens and
// nothing else can start listening while the demo runs: a TCP socket bound
// to the port but never put in listen state, so connections to it are
// refused (RST) and the port stays ours. release frees the port.
func reserveDeadAddr() (addr string, release func(), err error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("reserve dead port: socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("reserve dead port: bind: %w", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("reserve dead port: getsockname: %w", err)
	}
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		syscall.Close(fd)
		return "", nil, fmt.Errorf("reserve dead port: unexpected address %T", sa)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(in4.Port)), func() { syscall.Close(fd) }, nil
}
