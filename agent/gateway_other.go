//go:build !linux

package agent

import (
	"context"
	"errors"
)

func (a *Agent) startGatewayMode(context.Context) (runningGateway, error) {
	return nil, errors.New("gateway mode needs Linux")
}

func (a *Agent) refreshGatewayUpstreams(context.Context) {}
