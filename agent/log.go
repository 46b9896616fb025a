package agent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// LevelTrace is below slog's Debug, for proxy-hopper's TRACE level.
const LevelTrace = slog.Level(-8)

// ParseLevel maps proxy-hopper's level names (TRACE, DEBUG, INFO, WARNING,
// ERROR; WARN and CRITICAL are accepted too) to slog levels.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "TRACE":
		return LevelTrace, nil
	case "DEBUG":
		return slog.LevelDebug, nil
	case "", "INFO":
		return slog.LevelInfo, nil
	case "WARNING", "WARN":
		return slog.LevelWarn, nil
	case "ERROR", "CRITICAL":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want TRACE, DEBUG, INFO, WARNING or ERROR)", s)
}

// NewLogger builds the root logger: format "text" or "json", written to
// file when set (appending) or to stderr. The returned closer closes the file.
func NewLogger(level, format, file string) (*slog.Logger, io.Closer, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	var w io.Writer = os.Stderr
	var closer io.Closer = io.NopCloser(nil)
	if file != "" {
		f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("open log file: %w", err)
		}
		w, closer = f, f
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: levelNames}
	var h slog.Handler
	switch strings.ToLower(format) {
	case "", "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		closer.Close()
		return nil, nil, fmt.Errorf("unknown log format %q (want text or json)", format)
	}
	return slog.New(h), closer, nil
}

// levelNames prints proxy-hopper's level names.
func levelNames(_ []string, a slog.Attr) slog.Attr {
	if a.Key != slog.LevelKey {
		return a
	}
	switch l := a.Value.Any().(slog.Level); {
	case l <= LevelTrace:
		a.Value = slog.StringValue("TRACE")
	case l == slog.LevelWarn:
		a.Value = slog.StringValue("WARNING")
	}
	return a
}

// discard is a logger that drops everything.
func discard() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}
