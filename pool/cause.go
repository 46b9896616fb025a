package pool

import (
	"context"
	"strings"
	"unicode/utf8"
)

// MaxCauseLen bounds a quarantine cause, in bytes.
const MaxCauseLen = 64

type causeKey struct{}

// WithCause returns ctx carrying why a quarantine decided under it happens
// (a failed attempt's reason such as status_429 or connect_refused, a
// probe's, or admin): Release, Blame and Quarantine pass it to
// Hooks.QuarantinedWhy. It is cut to MaxCauseLen and kept to printable
// ASCII, as it may come from a peer's bytes.
func WithCause(ctx context.Context, cause string) context.Context {
	return context.WithValue(ctx, causeKey{}, CleanCause(cause))
}

// CauseOf is the cause WithCause put in ctx ("" when none).
func CauseOf(ctx context.Context) string {
	c, _ := ctx.Value(causeKey{}).(string)
	return c
}

// CleanCause cuts cause to MaxCauseLen bytes of printable ASCII (others
// become '?').
func CleanCause(cause string) string {
	if len(cause) > MaxCauseLen {
		cause = cause[:MaxCauseLen]
	}
	if !strings.ContainsFunc(cause, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
		return cause
	}
	var b strings.Builder
	for len(cause) > 0 {
		r, n := utf8.DecodeRuneInString(cause)
		cause = cause[n:]
		if r < 0x20 || r > 0x7e {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}
