package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

// Duration is a config duration: "500ms", "1s", "5m", "2h", or bare seconds.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is a size in bytes: 1048576, "512KiB", "1MiB", "1GiB", "10MB".
type ByteSize int64

// Decoding.

// decoderConfig is mapstructure's configuration for every section: our
// hooks, no weak typing (a YAML number is not a password), and unknown keys
// are an error (normalize has already reported them with their path).
func decoderConfig(dc *mapstructure.DecoderConfig) {
	dc.DecodeHook = mapstructure.DecodeHookFuncType(decodeHook)
	dc.WeaklyTypedInput = false
	dc.ErrorUnused = true
	dc.TagName = "mapstructure"
}

// decodeSection decodes one normalized section into out, adding a problem
// per bad field. fromEnv maps keys set from environment variables to them.
func decodeSection(in any, out any, label string, fromEnv map[string]string, p *problems) {
	if in == nil {
		return
	}
	dc := &mapstructure.DecoderConfig{Result: out}
	decoderConfig(dc)
	d, err := mapstructure.NewDecoder(dc)
	if err != nil {
		p.add("%s: %v", label, err)
		return
	}
	for _, fe := range fieldErrors(d.Decode(in)) {
		msg := fmt.Sprintf("%s: %s", where(label, fe.name), fe.msg)
		if v, ok := fromEnv[fe.name]; ok {
			msg += fmt.Sprintf(" (from %s)", v)
		}
		*p = append(*p, msg)
	}
}

type fieldError struct{ name, msg string }

// fieldErrors flattens mapstructure's joined, nested errors to one
// (field, message) per problem.
func fieldErrors(err error) []fieldError {
	var out []fieldError
	var walk func(name string, err error)
	walk = func(name string, err error) {
		if err == nil {
			return
		}
		if de, ok := err.(*mapstructure.DecodeError); ok {
			walk(de.Name(), de.Unwrap())
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(name, e)
			}
			return
		}
		if w := errors.Unwrap(err); w != nil && strings.HasPrefix(err.Error(), "decoding failed") {
			walk(name, w)
			return
		}
		out = append(out, fieldError{name, err.Error()})
	}
	walk("", err)
	return out
}

// decodeHook converts YAML, environment and flag values to field types
// and reports wrong types without echoing the value.
func decodeHook(_ reflect.Type, to reflect.Type, data any) (any, error) {
	for to.Kind() == reflect.Pointer {
		to = to.Elem()
	}
	if data == nil || reflect.TypeOf(data) == to {
		return data, nil
	}
	switch to {
	case durationType:
		return ParseDuration(data)
	case byteSizeType:
		return ParseByteSize(data)
	}
	switch to.Kind() {
	case reflect.String:
		if _, ok := data.(string); !ok {
			return nil, fmt.Errorf("want a string, got %s (quote it)", describe(data))
		}
	case reflect.Bool:
		return toBool(data)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return toInt(data)
	case reflect.Slice:
		if reflect.ValueOf(data).Kind() != reflect.Slice {
			return nil, fmt.Errorf("want a list, got %s", describe(data))
		}
	case reflect.Struct, reflect.Map:
		if reflect.ValueOf(data).Kind() != reflect.Map {
			return nil, fmt.Errorf("want a mapping, got %s", describe(data))
		}
	}
	return data, nil
}

// toBool accepts what proxy-hopper (pydantic) accepts: booleans, 0 and 1,
// and the strings 1/0, true/false, yes/no, on/off, t/f, y/n in any case.
func toBool(data any) (bool, error) {
	switch v := data.(type) {
	case bool:
		return v, nil
	case int:
		if v == 0 || v == 1 {
			return v == 1, nil
		}
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "true", "yes", "on", "t", "y":
			return true, nil
		case "0", "false", "no", "off", "f", "n":
			return false, nil
		}
		return false, fmt.Errorf("want true or false, got %q", v)
	}
	return false, fmt.Errorf("want true or false, got %s", describe(data))
}

// toInt accepts whole numbers, also as a string (environment, flags).
func toInt(data any) (int64, error) {
	switch v := data.(type) {
	case int:
		return int64(v), nil
	case int64:
		return v, nil
	case uint64:
		if v <= math.MaxInt64 {
			return int64(v), nil
		}
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int64(v), nil
		}
		return 0, fmt.Errorf("want a whole number, got %v", v)
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("want a whole number, got %q", v)
		}
		return n, nil
	}
	return 0, fmt.Errorf("want a whole number, got %s", describe(data))
}

// ParseDuration reads a config duration: a Go duration string ("500ms",
// "1.5s", "5m", "2h", "1h30m") or a number of seconds (10, 1.5, "1.5").
// Negative durations are an error.
func ParseDuration(v any) (Duration, error) {
	var secs float64
	switch x := v.(type) {
	case Duration:
		return x, checkNonNegative(time.Duration(x))
	case time.Duration:
		return Duration(x), checkNonNegative(x)
	case int:
		secs = float64(x)
	case int64:
		secs = float64(x)
	case uint64:
		secs = float64(x)
	case float64:
		secs = x
	case string:
		s := strings.TrimSpace(x)
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			secs = f
			break
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 500ms, 30s, 5m, 2h, or a number of seconds)", x)
		}
		return Duration(d), checkNonNegative(d)
	default:
		return 0, fmt.Errorf("want a duration (e.g. 30s, 5m, or seconds), got %s", describe(v))
	}
	if math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > float64(math.MaxInt64)/float64(time.Second) {
		return 0, fmt.Errorf("duration of %v seconds is out of range", secs)
	}
	d := time.Duration(math.Round(secs * float64(time.Second)))
	return Duration(d), checkNonNegative(d)
}

func checkNonNegative(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("duration %s must not be negative", d)
	}
	return nil
}

func (d Duration) String() string { return time.Duration(d).String() }

var byteUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
	"ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20,
	"gi": 1 << 30, "gib": 1 << 30, "ti": 1 << 40, "tib": 1 << 40,
}

var byteSizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

// ParseByteSize reads a size: a number of bytes or a string with a unit,
// binary (KiB, MiB, GiB, TiB: powers of 1024) or decimal (KB, MB, GB, TB:
// powers of 1000), in any case: 1048576, "512KiB", "1MiB", "10MB".
func ParseByteSize(v any) (ByteSize, error) {
	var f float64
	switch x := v.(type) {
	case ByteSize:
		if x < 0 {
			return 0, errors.New("size must not be negative")
		}
		return x, nil
	case int:
		f = float64(x)
	case int64:
		f = float64(x)
	case uint64:
		f = float64(x)
	case float64:
		f = x
		if f != math.Trunc(f) {
			return 0, fmt.Errorf("size %v is not a whole number of bytes", x)
		}
	case string:
		m := byteSizeRE.FindStringSubmatch(strings.TrimSpace(x))
		if m == nil {
			return 0, fmt.Errorf("invalid size %q (want e.g. 1048576, 512KiB, 1MiB, 1GiB, 10MB)", x)
		}
		mult, ok := byteUnits[strings.ToLower(m[2])]
		if !ok {
			return 0, fmt.Errorf("invalid size %q: unknown unit %q (want B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", x, m[2])
		}
		n, _ := strconv.ParseFloat(m[1], 64)
		f = math.Floor(n * mult)
	default:
		return 0, fmt.Errorf("want a size (e.g. 1MiB), got %s", describe(v))
	}
	if f < 0 {
		return 0, errors.New("size must not be negative")
	}
	if f >= math.MaxInt64 {
		return 0, errors.New("size is out of range")
	}
	return ByteSize(f), nil
}
