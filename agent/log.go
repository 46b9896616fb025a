package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// NewLogger builds the root logger at level (config.Resolved.LogLevel):
// format "text" or "json", written to file when set (appending) or to
// stderr. The returned closer closes the file.
func NewLogger(level slog.Level, format, file string) (*slog.Logger, io.Closer, error) {
	var w io.Writer = os.Stderr
	var closer io.Closer = io.NopCloser(nil)
	if file != "" {
		f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("open log file: %w", err)
		}
		w, closer = f, f
	}
	h, err := NewLogHandler(w, LogHandlerOptions{Level: level, Format: format})
	if err != nil {
		closer.Close()
		return nil, nil, err
	}
	return slog.New(h), closer, nil
}

// LogHandlerOptions configure NewLogHandler.
type LogHandlerOptions struct {
	Level  slog.Leveler   // default INFO
	Format string         // "text" (default) or "json"
	Zone   *time.Location // of the JSON timestamp; default time.Local (TZ)
}

// The field names of a JSON line, proxy-hopper's (its logging_config.py).
const (
	jsonTimeKey    = "timestamp"
	jsonLevelKey   = "level"
	jsonLoggerKey  = "logger"
	jsonMessageKey = "message"
	// jsonTimeLayout is proxy-hopper's "%Y-%m-%dT%H:%M:%S", local time.
	jsonTimeLayout = "2006-01-02T15:04:05"
	// loggerKey names the logger in a text line.
	loggerKey = "logger"
	// componentKey is the attribute our packages name their part with
	// (logger.With("component", "pool")); it becomes the line's logger.
	componentKey = "component"
	// rootLogger is the logger of lines without a component: the agent's
	// own (start-up, reloads, shutdown) and the CLI's, which in
	// proxy-hopper come from proxy_hopper.cli.
	rootLogger = "proxy_hopper.cli"
	// clashPrefix is put before an attribute's key that would repeat one
	// of the line's own fields.
	clashPrefix = "attr_"
)

// NewLogHandler returns the handler of the agent's log lines. Both formats
// carry proxy-hopper's level names (TRACE, DEBUG, INFO, WARNING, ERROR),
// a logger named as proxy-hopper's Python modules (LoggerName, from the
// component attribute) and durations in seconds. JSON lines start with
// proxy-hopper's four fields, {"timestamp":"2006-01-02T15:04:05",
// "level":..., "logger":..., "message":...}, followed by the line's
// attributes (durations as seconds, a JSON number). Text lines are slog's
// key=value lines with logger= after msg= and durations written "1.5s".
func NewLogHandler(w io.Writer, o LogHandlerOptions) (slog.Handler, error) {
	if o.Zone == nil {
		o.Zone = time.Local
	}
	h := &logHandler{logger: rootLogger, zone: o.Zone}
	opts := &slog.HandlerOptions{Level: o.Level}
	switch strings.ToLower(o.Format) {
	case "", "text":
		opts.ReplaceAttr = replaceText
		h.inner = slog.NewTextHandler(w, opts)
	case "json":
		opts.ReplaceAttr = replaceJSON
		h.inner = slog.NewJSONHandler(w, opts)
		h.json = true
	default:
		return nil, fmt.Errorf("unknown log format %q (want text or json)", o.Format)
	}
	return h, nil
}

// logHandler keeps the attributes and groups it is given (WithAttrs,
// WithGroup) and hands each line to slog's text or JSON handler with its
// own fields first: the inner handler never sees the component, and in
// JSON never writes its own time, level and msg (the record it gets has
// no time; replaceJSON drops level and msg).
type logHandler struct {
	inner  slog.Handler
	json   bool
	zone   *time.Location
	logger string         // from the last component attribute
	goas   []groupOrAttrs // since the root, in order
}

// groupOrAttrs is one WithGroup (group set) or WithAttrs call.
type groupOrAttrs struct {
	group string
	attrs []slog.Attr
}

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

// inGroup tells whether attributes added now land in a group.
func (h *logHandler) inGroup() bool {
	return slices.ContainsFunc(h.goas, func(g groupOrAttrs) bool { return g.group != "" })
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	top := !h.inGroup()
	keep := make([]slog.Attr, 0, len(as))
	for _, a := range as {
		if top && a.Key == componentKey {
			h2.logger = LoggerName(a.Value.Resolve().String())
			continue
		}
		a.Value = a.Value.Resolve()
		keep = append(keep, a)
	}
	if len(keep) > 0 {
		h2.goas = append(slices.Clip(h.goas), groupOrAttrs{attrs: keep})
	}
	return &h2
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.goas = append(slices.Clip(h.goas), groupOrAttrs{group: name})
	return &h2
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	logger := h.logger
	top := !h.inGroup()
	rec := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		if top && a.Key == componentKey {
			logger = LoggerName(a.Value.Resolve().String())
		} else {
			rec = append(rec, a)
		}
		return true
	})
	var out slog.Record
	if h.json {
		out = slog.NewRecord(time.Time{}, r.Level, "", r.PC)
		if !r.Time.IsZero() {
			out.AddAttrs(slog.String(jsonTimeKey, r.Time.In(h.zone).Format(jsonTimeLayout)))
		}
		out.AddAttrs(slog.String(jsonLevelKey, LevelName(r.Level)), slog.String(jsonLoggerKey, logger), slog.String(jsonMessageKey, r.Message))
	} else {
		out = slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
		out.AddAttrs(slog.String(loggerKey, logger))
	}
	for _, a := range nest(h.goas, rec) {
		if h.clashes(a.Key) {
			a.Key = clashPrefix + a.Key
		}
		out.AddAttrs(a)
	}
	return h.inner.Handle(ctx, out)
}

// clashes tells whether a top-level attribute key would repeat one of the
// line's own fields.
func (h *logHandler) clashes(key string) bool {
	if h.json {
		return key == jsonTimeKey || key == jsonLevelKey || key == jsonLoggerKey || key == jsonMessageKey || key == slog.MessageKey
	}
	return key == slog.TimeKey || key == slog.LevelKey || key == slog.MessageKey || key == loggerKey
}

// nest puts rec after the attributes of goas, inside their groups.
func nest(goas []groupOrAttrs, rec []slog.Attr) []slog.Attr {
	var out []slog.Attr
	for i, g := range goas {
		if g.group != "" {
			return append(out, slog.Attr{Key: g.group, Value: slog.GroupValue(nest(goas[i+1:], rec)...)})
		}
		out = append(out, g.attrs...)
	}
	return append(out, rec...)
}

// replaceJSON drops the inner JSON handler's own level and msg (the line
// carries proxy-hopper's fields instead; a record attribute with either
// key was renamed before) and writes durations as seconds.
func replaceJSON(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 {
		if _, ok := a.Value.Any().(slog.Level); ok && a.Key == slog.LevelKey {
			return slog.Attr{}
		}
		if a.Key == slog.MessageKey {
			return slog.Attr{}
		}
	}
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.Float64Value(a.Value.Duration().Seconds())
	}
	return a
}

// replaceText prints proxy-hopper's level names and durations in seconds.
func replaceText(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.LevelKey {
		if l, ok := a.Value.Any().(slog.Level); ok {
			a.Value = slog.StringValue(LevelName(l))
		}
	}
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(strconv.FormatFloat(a.Value.Duration().Seconds(), 'f', -1, 64) + "s")
	}
	return a
}

// LevelName is proxy-hopper's name of level l.
func LevelName(l slog.Level) string {
	switch {
	case l <= config.LevelTrace:
		return "TRACE"
	case l < slog.LevelInfo:
		return "DEBUG"
	case l < slog.LevelWarn:
		return "INFO"
	case l < slog.LevelError:
		return "WARNING"
	}
	return "ERROR"
}

// LoggerName maps one of our components to the logger name of the
// proxy-hopper module that logs the same events, so a query on the
// original's logger names keeps matching; parts proxy-hopper does not have
// get a name under proxy_hopper. (docs/migration.md has the table).
func LoggerName(component string) string {
	switch component {
	case "":
		return rootLogger
	case "proxy":
		return "proxy_hopper.handlers" // request lines
	case "pool":
		return "proxy_hopper.pool" // quarantine, release
	case "prober":
		return "proxy_hopper.prober"
	case "metrics":
		return "proxy_hopper.metrics"
	case "admin":
		return "proxy_hopper.auth.admin"
	case "auth":
		return "proxy_hopper.auth"
	case "redis":
		return "proxy_hopper_redis.backend"
	case "go-redis":
		return "proxy_hopper_redis.client"
	}
	// Our own parts (transparent, gateway): bounded, one word.
	const maxLen = 32
	var b strings.Builder
	for _, c := range component {
		if b.Len() >= maxLen {
			break
		}
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
			b.WriteRune(c)
		case c >= 'A' && c <= 'Z':
			b.WriteRune(c + 'a' - 'A')
		default:
			b.WriteByte('_')
		}
	}
	return "proxy_hopper." + b.String()
}

// discard is a logger that drops everything.
func discard() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}
