package proxy

import (
	"context"
	"log/slog"
	"strings"
)

// logRequest writes the line of one finished request or tunnel: DEBUG for
// a success and for a transparent connection no target wants (it follows
// the unmatched policy); otherwise INFO, at most Options.RequestLogBurst lines per
// outcome (per reason for refusals by auth) in each RequestLogInterval, the
// rest counted and summarised in one line per interval (internal/logrl),
// so a client flooding refused requests cannot flood the log. The
// metrics count every request whatever is logged. args builds the line's
// attributes; it is only called for lines that are written.
func (s *Server) logRequest(ev *RequestEvent, msg string, args func() []any) {
	ctx := context.Background()
	if ev.Outcome == OutcomeSuccess || (ev.Outcome == OutcomeNoMatch && strings.HasPrefix(ev.Mode, "transparent-")) {
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug(msg, args()...)
		}
		return
	}
	key := ev.Outcome
	if ev.AuthReason != "" {
		key = ev.AuthReason
	}
	if !s.reqLog.Allow(ctx, slog.LevelInfo, key, msg) {
		return
	}
	a := args()
	if ev.AuthReason != "" {
		a = append(a, "reason", ev.AuthReason)
	}
	s.log.Info(msg, a...)
}
