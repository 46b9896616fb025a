// Package logrl rate-limits log lines that clients can cause (refused
// requests, failed ones): per key, at most Burst lines in each Interval;
// the rest of that interval's lines are dropped, counted, and summarised
// in one line when the interval ends. Keys are bounded (MaxKeys), so a
// client cannot grow the limiter's state whatever it sends.
package logrl

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// OtherKey is the shared key of lines whose key came after MaxKeys others.
const OtherKey = "other"

// Defaults of Options.
const (
	DefaultBurst    = 10
	DefaultInterval = time.Minute
	DefaultMaxKeys  = 64
)

// Options tune a Limiter; zero fields take the defaults.
type Options struct {
	Burst    int           // lines per key per interval (DefaultBurst)
	Interval time.Duration // DefaultInterval
	MaxKeys  int           // distinct keys tracked (DefaultMaxKeys); later keys share OtherKey
	// KeyAttr names the key in summary lines ("key").
	KeyAttr string
	// Now and AfterFunc are the clock (time.Now, time.AfterFunc); tests
	// inject a fake one. AfterFunc returns the timer's Stop.
	Now       func() time.Time
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
}

// Limiter writes lines to a logger, at most Burst per key per interval.
// It is safe for concurrent use.
type Limiter struct {
	log *slog.Logger
	o   Options

	mu   sync.Mutex
	keys map[string]*window
}

// window is one key's current interval.
type window struct {
	end        time.Time
	lines      int // written in this interval
	suppressed int // dropped in this interval
	level      slog.Level
	msg        string      // of the first dropped line
	stop       func() bool // the pending summary timer, nil when none
}

// New returns a limiter writing to log.
func New(log *slog.Logger, o Options) *Limiter {
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	if o.KeyAttr == "" {
		o.KeyAttr = "key"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AfterFunc == nil {
		o.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	return &Limiter{log: log, o: o, keys: map[string]*window{}}
}

// summary is a due "suppressed" line.
type summary struct {
	key   string
	level slog.Level
	msg   string
	n     int
}

// Log writes msg with args at level unless key has had Burst lines in the
// current interval; then the line is only counted. A line the logger
// would not write anyway is not counted either.
func (l *Limiter) Log(ctx context.Context, level slog.Level, key, msg string, args ...any) {
	if l.Allow(ctx, level, key, msg) {
		l.log.Log(ctx, level, msg, args...)
	}
}

// Allow reports whether a line msg of key at level may be written now,
// counting it as Log does; the caller writes it. It spares building the
// line's attributes when it would be dropped.
func (l *Limiter) Allow(ctx context.Context, level slog.Level, key, msg string) bool {
	if !l.log.Enabled(ctx, level) {
		return false
	}
	ok, due := l.admit(key, level, msg)
	if due != nil {
		l.write(ctx, due)
	}
	return ok
}

func (l *Limiter) admit(key string, level slog.Level, msg string) (bool, *summary) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.o.Now()
	w := l.keys[key]
	if w == nil {
		if len(l.keys) >= l.o.MaxKeys {
			key = OtherKey
			w = l.keys[key]
		}
		if w == nil {
			w = &window{}
			l.keys[key] = w
		}
	}
	var due *summary
	if !now.Before(w.end) { // the interval is over (or this is the key's first line)
		due = w.flush(key)
		w.end, w.lines = now.Add(l.o.Interval), 0
	}
	if w.lines < l.o.Burst {
		w.lines++
		return true, due
	}
	w.suppressed++
	if w.suppressed == 1 {
		w.level, w.msg = level, msg
		end := w.end
		w.stop = l.o.AfterFunc(end.Sub(now), func() { l.expire(key, end) })
	}
	return false, due
}

// flush takes w's pending summary, if any, and stops its timer.
func (w *window) flush(key string) *summary {
	if w.stop != nil {
		w.stop()
		w.stop = nil
	}
	if w.suppressed == 0 {
		return nil
	}
	s := &summary{key: key, level: w.level, msg: w.msg, n: w.suppressed}
	w.suppressed = 0
	return s
}

// expire writes the summary of key's interval that ended at end, unless
// a later line already did.
func (l *Limiter) expire(key string, end time.Time) {
	l.mu.Lock()
	var due *summary
	if w := l.keys[key]; w != nil && w.end.Equal(end) {
		w.stop = nil
		due = w.flush(key)
	}
	l.mu.Unlock()
	if due != nil {
		l.write(context.Background(), due)
	}
}

// Flush writes the summaries of every key now, without waiting for their
// intervals to end (at shutdown). The intervals go on.
func (l *Limiter) Flush() {
	l.mu.Lock()
	var due []*summary
	for key, w := range l.keys {
		if s := w.flush(key); s != nil {
			due = append(due, s)
		}
	}
	l.mu.Unlock()
	for _, s := range due {
		l.write(context.Background(), s)
	}
}

func (l *Limiter) write(ctx context.Context, s *summary) {
	l.log.Log(ctx, s.level, "log lines suppressed", l.o.KeyAttr, s.key, "suppressed", s.n,
		"suppressed_message", s.msg, "interval", l.o.Interval)
}
