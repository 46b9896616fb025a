//go:build !linux

package gateway

import (
	"context"
	"errors"
	"net/netip"

	"github.com/proxy-hopper/proxy-hopper/metrics"
)

// Mode is not available outside Linux.
type Mode struct{}

// Start is not available outside Linux.
func Start(context.Context, Options) (*Mode, error) {
	return nil, errors.New("gateway mode needs Linux")
}

// Leftovers is not available outside Linux.
func Leftovers() ([]string, error) { return nil, errors.New("eBPF needs Linux") }

// Counters has nothing outside Linux.
func (*Mode) Counters() ([]metrics.IPCounter, []metrics.ClientCounter, error) { return nil, nil, nil }

// ExcludeUpstreams does nothing outside Linux.
func (*Mode) ExcludeUpstreams([]netip.Prefix) {}

// Drain does nothing outside Linux.
func (*Mode) Drain() {}

// Close does nothing outside Linux.
func (*Mode) Close() error { return nil }
