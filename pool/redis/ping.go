package redis

import (
	"context"
	"fmt"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// Ping asks Redis for a PONG now: nil when it answers, an error wrapping
// pool.ErrBackendUnavailable when it does not, pool.ErrClosed once the
// backend is closed. Readiness checks (the admin /readyz) call it.
func (b *Backend) Ping(ctx context.Context) error {
	if b.closed.Load() || b.finished() {
		return pool.ErrClosed
	}
	if err := b.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: ping redis: %v", pool.ErrBackendUnavailable, err)
	}
	return nil
}
