package agent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

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
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: levelNames}
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
	case l <= config.LevelTrace:
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
