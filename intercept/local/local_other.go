//go:build !linux

package local

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// Mode is not available outside Linux.
type Mode struct{}

// Start is not available outside Linux.
func Start(context.Context, Options) (*Mode, error) {
	return nil, errors.New("transparent mode needs Linux")
}

// Dialer is a plain dialer outside Linux (nothing is redirected there).
func Dialer(uint32) *net.Dialer { return &net.Dialer{KeepAlive: 30 * time.Second} }

// ExcludeUpstreams does nothing outside Linux.
func (*Mode) ExcludeUpstreams([]netip.Prefix) {}

// Stop does nothing outside Linux.
func (*Mode) Stop() error { return nil }

// Close does nothing outside Linux.
func (*Mode) Close() error { return nil }
