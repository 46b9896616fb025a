package redis

import (
	"context"
	"fmt"
	"log/slog"

	goredis "github.com/redis/go-redis/v9"
)

// RouteClientLogs sends go-redis's own log lines (one per failed dial while
// Redis is down, for instance) to l at DEBUG level, instead of stderr. The
// backend logs the state changes that matter; go-redis has one logger per
// process, so the program's wiring calls this, once.
func RouteClientLogs(l *slog.Logger) {
	goredis.SetLogger(clientLog{l.With("component", "go-redis")})
}

type clientLog struct{ l *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	c.l.DebugContext(ctx, fmt.Sprintf(format, v...))
}
