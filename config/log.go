package config

import (
	"fmt"
	"log/slog"
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
