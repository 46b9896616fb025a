//go:build !linux

package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"time"
)

func markingDialer(uint32) *net.Dialer { return &net.Dialer{KeepAlive: 30 * time.Second} }

func (a *Agent) startTransparent(context.Context) (io.Closer, error) {
	return nil, errors.New("transparent mode needs Linux")
}

func (a *Agent) refreshTransparentUpstreams(context.Context) {}
