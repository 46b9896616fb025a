package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// EnvPrefix starts every environment variable proxy-hopper reads: each
// server key is PROXY_HOPPER_ + its snake_case name in upper case
// (logLevel → PROXY_HOPPER_LOG_LEVEL).
const EnvPrefix = "PROXY_HOPPER_"

// ValidationError is every problem found in a config, each naming the
// target, pool or provider and the field. It never contains credentials.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string { return strings.Join(e.Problems, "\n") }

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}

// DefaultServerConfig is the server block with nothing set: proxy-hopper's
// defaults plus ours for the keys it does not have.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Host:          "0.0.0.0",
		Port:          8080,
		LogLevel:      "INFO",
		LogFormat:     "text",
		Backend:       "memory",
		RedisURL:      "redis://localhost:6379/0",
		MetricsPort:   9090,
		Probe:         true,
		ProbeInterval: Duration(60 * time.Second),
		ProbeTimeout:  Duration(10 * time.Second),
		ProbeURLs:     []string{"http://1.1.1.1", "http://www.google.com"},
		AdminPort:     8081,
		AdminHost:     "0.0.0.0",

		AdminSessionTTL: Duration(12 * time.Hour),

		ConnectTimeout:    Duration(10 * time.Second),
		IdleTimeout:       Duration(120 * time.Second),
		HeaderTimeout:     Duration(10 * time.Second),
		MaxBodySize:       1 << 30,
		RetryBufferSize:   1 << 20,
		ShutdownTimeout:   Duration(30 * time.Second),
		TunnelIdleTimeout: Duration(10 * time.Minute),
		RedisKeyPrefix:    "ph:",
		RedisLeaseTTL:     Duration(30 * time.Second),

		MetricsTagLimit:         100,
		RequestLogBurst:         10,
		RequestLogInterval:      Duration(time.Minute),
		DenyDestinations:        DefaultDenyDestinations(),
		AllowDestinations:       []string{},
		MaxConnectionsPerClient: 4096,
		FdReserve:               256,
		MaxClientRequests:       512,
		MaxClientTunnels:        256,
	}
}

// DefaultTargetConfig is a target with only the defaulted keys set.
func DefaultTargetConfig() TargetConfig {
	return TargetConfig{
		DefaultProxyPort:          8080,
		MinRequestInterval:        Duration(time.Second),
		MaxQueueWait:              Duration(30 * time.Second),
		NumRetries:                3,
		IPFailuresUntilQuarantine: 5,
		QuarantineTime:            Duration(120 * time.Second),
		MaxQueueLength:            500,
	}
}

// Load reads the YAML config at path. overrides are server keys set on the
// command line (camelCase, e.g. "port", "logLevel", "probeUrls"); a server
// key is taken, highest first, from overrides, the file's server block,
// PROXY_HOPPER_* environment variables, then the defaults. Unknown keys and
// values of the wrong type are reported together as a *ValidationError.
// Load does not check values; Resolve does.
func Load(path string, overrides map[string]any) (*Config, error) {
	return LoadContext(context.Background(), path, overrides)
}

// LoadContext is Load with a context that ends a read of the file still
// under way (a FIFO or pipe whose writer is slow).
func LoadContext(ctx context.Context, path string, overrides map[string]any) (*Config, error) {
	data, err := readFileLimited(ctx, path, MaxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	cfg, err := fromDocument(doc, overrides, newEnv(os.Environ()))
	if err != nil {
		return nil, err
	}
	if abs, err := filepath.Abs(path); err == nil {
		cfg.baseDir = filepath.Dir(abs)
	}
	return cfg, nil
}

// MaxConfigBytes bounds the config file and each file it names (caFile):
// a larger one is refused without being read further.
const MaxConfigBytes = 4 << 20

// configReadTimeout bounds the whole read of a file that can make a reader
// wait (a FIFO or pipe).
const configReadTimeout = 10 * time.Second

// readFileLimited reads at most max bytes of path and fails if it holds
// more. It opens the file non-blocking, so a FIFO without a writer reads as
// empty instead of hanging in open, and a FIFO or pipe that is slow to
// write is cut after configReadTimeout or when ctx ends (regular files and
// devices such as /dev/zero never wait: the size bound ends them).
func readFileLimited(ctx context.Context, path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	_ = f.SetReadDeadline(time.Now().Add(configReadTimeout)) // pollable files only
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
		return nil, fmt.Errorf("read %s: %w", path, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, fmt.Errorf("read %s: not complete after %s", path, configReadTimeout)
	case err != nil:
		return nil, err
	case int64(len(data)) > max:
		return nil, fmt.Errorf("%s is larger than the %d MiB limit", path, max>>20)
	}
	return data, nil
}

// fromDocument builds a Config from a parsed YAML document: normalize
// (spellings, unknown keys, shapes), then the server block through viper's
// layers, then every other section with mapstructure straight from the
// document, one entry at a time, so that problems name their entry and map
// keys (role names) keep their case, which viper would lower-case.
func fromDocument(doc any, overrides map[string]any, env envVars) (*Config, error) {
	var p problems
	if doc == nil {
		doc = map[string]any{}
	}
	if _, ok := toStringMap(doc); !ok {
		return nil, &ValidationError{Problems: []string{"config: the top level must be a mapping (server, auth, proxyProviders, ipPools, targets)"}}
	}
	n := normalizer{p: &p}
	root, _ := n.walk(doc, reflect.TypeOf(Config{}), "", "").(map[string]any)

	cfg := &Config{}
	srvMap, _ := root["server"].(map[string]any)
	cfg.Server = decodeServer(srvMap, overrides, env, &p)

	authMap, _ := root["auth"].(map[string]any)
	authMap, fromEnv := applyAuthEnv(authMap, env)
	cfg.Auth = AuthConfig{JWTExpiryMinutes: 60, JWTMaxLifetime: Duration(auth.DefaultJWTMaxLifetime), DefaultRole: auth.DefaultRole}
	decodeSection(authMap, &cfg.Auth, "auth", fromEnv, &p)
	cfg.Auth.setDefaults()

	for i, raw := range listOf(root["proxyProviders"]) {
		var pc ProviderConfig
		decodeSection(raw, &pc, entityLabel("proxyProviders", i, raw), nil, &p)
		pc.Mutable, pc.Static = orTrue(pc.Mutable), orTrue(pc.Static)
		cfg.ProxyProviders = append(cfg.ProxyProviders, pc)
	}
	for i, raw := range listOf(root["ipPools"]) {
		var pc IPPoolConfig
		decodeSection(raw, &pc, entityLabel("ipPools", i, raw), nil, &p)
		pc.Mutable, pc.Static = orTrue(pc.Mutable), orTrue(pc.Static)
		cfg.IPPools = append(cfg.IPPools, pc)
	}
	for i, raw := range listOf(root["targets"]) {
		tc := DefaultTargetConfig()
		decodeSection(raw, &tc, entityLabel("targets", i, raw), nil, &p)
		tc.setDefaults()
		cfg.Targets = append(cfg.Targets, tc)
	}
	decodeSection(root["transparent"], &cfg.Transparent, "transparent", nil, &p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func orTrue(b *bool) *bool {
	if b != nil {
		return b
	}
	t := true
	return &t
}

func (a *AuthConfig) setDefaults() {
	for i := range a.APIKeys {
		if a.APIKeys[i].Targets == nil {
			a.APIKeys[i].Targets = []string{"*"}
		}
	}
	for name, r := range a.Roles {
		if r.Targets == nil {
			r.Targets = []string{"*"}
		}
		if r.Permissions == nil {
			r.Permissions = []string{}
		}
		a.Roles[name] = r
	}
	if a.Admin != nil && a.Admin.Role == "" {
		a.Admin.Role = "admin"
	}
	if a.OIDC != nil && a.OIDC.RolesClaim == "" {
		a.OIDC.RolesClaim = "proxy_hopper_role"
	}
}

func (t *TargetConfig) setDefaults() {
	t.SpoofUserAgent, t.Mutable, t.Static = orTrue(t.SpoofUserAgent), orTrue(t.Mutable), orTrue(t.Static)
	t.Identity.Cookies, t.Identity.RotateOn429 = orTrue(t.Identity.Cookies), orTrue(t.Identity.RotateOn429)
	if w := t.Identity.Warmup; w != nil {
		w.Enabled = orTrue(w.Enabled)
		if w.Path == "" {
			w.Path = "/"
		}
	}
}

func listOf(v any) []any {
	l, _ := v.([]any)
	return l
}

// entityLabel names a list entry in problems: `targets[1] (api)`.
func entityLabel(section string, i int, raw any) string {
	if m, ok := raw.(map[string]any); ok {
		if name, ok := m["name"].(string); ok && name != "" {
			return fmt.Sprintf("%s[%d] (%s)", section, i, name)
		}
	}
	return fmt.Sprintf("%s[%d]", section, i)
}

// ---------------------------------------------------------------------------
// Key normalization: snake_case spellings, unknown keys, shapes.

// extraAliases are spellings proxy-hopper accepts besides camelCase and the
// automatic snake_case of every key.
var extraAliases = map[reflect.Type]map[string]string{
	reflect.TypeOf(TargetConfig{}): {
		"poolName":              "ipPool",
		"pool_name":             "ipPool",
		"maxRequestTimeInQueue": "maxQueueWait",
	},
	reflect.TypeOf(IdentityConfig{}): {
		"rotate_on_429": "rotateOn429",
	},
}

type fieldInfo struct {
	key string // canonical (camelCase) key
	typ reflect.Type
}

type structKeys struct {
	byName    map[string]fieldInfo // every accepted spelling
	canonical []string
}

var keyCache sync.Map // reflect.Type → *structKeys

func keysOf(t reflect.Type) *structKeys {
	if k, ok := keyCache.Load(t); ok {
		return k.(*structKeys)
	}
	k := &structKeys{byName: map[string]fieldInfo{}}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		fi := fieldInfo{key: tag, typ: f.Type}
		k.byName[tag] = fi
		k.byName[snakeCase(tag)] = fi
		k.canonical = append(k.canonical, tag)
	}
	for alias, canon := range extraAliases[t] {
		k.byName[alias] = k.byName[canon]
	}
	keyCache.Store(t, k)
	return k
}

// inOrder returns the keys of m in the order of the struct's fields, so
// problems come in the order of the file's documentation; unknown keys last.
func (k *structKeys) inOrder(m map[string]any) []string {
	pos := func(key string) int {
		if fi, ok := k.byName[key]; ok {
			return slices.Index(k.canonical, fi.key)
		}
		return len(k.canonical)
	}
	keys := sortedKeys(m)
	sort.SliceStable(keys, func(i, j int) bool { return pos(keys[i]) < pos(keys[j]) })
	return keys
}

// snakeCase turns camelCase into snake_case: logLevel → log_level.
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

var (
	durationType = reflect.TypeOf(Duration(0))
	byteSizeType = reflect.TypeOf(ByteSize(0))
)

// normalizer rewrites a YAML document to canonical keys, reporting unknown
// keys, keys given twice (camelCase and snake_case) and wrong shapes.
type normalizer struct{ p *problems }

// walk returns v normalized for type t. entity is the label of the
// enclosing list entry or section ("" at the top), key the path inside it.
func (n normalizer) walk(v any, t reflect.Type, entity, key string) any {
	if v == nil {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType || t == byteSizeType:
		return v
	case t.Kind() == reflect.Struct:
		m, ok := toStringMap(v)
		if !ok {
			n.shape(entity, key, "a mapping", v)
			return nil
		}
		keys := keysOf(t)
		out := make(map[string]any, len(m))
		seen := map[string]string{}
		for _, k := range keys.inOrder(m) {
			fi, ok := keys.byName[k]
			if !ok {
				n.unknown(entity, key, k, keys.canonical)
				continue
			}
			if prev, dup := seen[fi.key]; dup {
				n.p.add("%s: %q and %q are the same key; set it once", where(entity, key), prev, k)
				continue
			}
			seen[fi.key] = k
			childEntity, childKey := entity, join(key, fi.key)
			if entity == "" {
				childEntity, childKey = fi.key, ""
			}
			out[fi.key] = n.walk(m[k], fi.typ, childEntity, childKey)
		}
		return out
	case t.Kind() == reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			n.shape(entity, key, "a list", v)
			return nil
		}
		et := t.Elem()
		out := make([]any, len(l))
		for i, item := range l {
			if key == "" && !strings.Contains(entity, "[") {
				// A top-level list: each entry is an entity of its own.
				out[i] = n.walk(item, et, entityLabel(entity, i, normalizeName(item)), "")
				continue
			}
			out[i] = n.walk(item, et, entity, fmt.Sprintf("%s[%d]", key, i))
		}
		return out
	case t.Kind() == reflect.Map:
		m, ok := toStringMap(v)
		if !ok {
			n.shape(entity, key, "a mapping", v)
			return nil
		}
		if t.Elem().Kind() == reflect.Interface {
			return m
		}
		out := make(map[string]any, len(m))
		for _, k := range sortedKeys(m) {
			out[k] = n.walk(m[k], t.Elem(), entity, join(key, k))
		}
		return out
	}
	return v
}

// normalizeName lets entityLabel find a name given in any map shape.
func normalizeName(v any) any {
	m, ok := toStringMap(v)
	if !ok {
		return v
	}
	return m
}

func (n normalizer) shape(entity, key, want string, got any) {
	n.p.add("%s: want %s, got %s", where(entity, key), want, describe(got))
}

func (n normalizer) unknown(entity, key, k string, known []string) {
	msg := fmt.Sprintf("unknown key %q", join(key, k))
	if entity == "" {
		msg = fmt.Sprintf("unknown top-level key %q", k)
	}
	if s := suggest(k, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", join(key, s))
	}
	if entity != "" {
		msg = entity + ": " + msg
	}
	n.p.add("%s", msg)
}

// where is "entity: key" or just the entity.
func where(entity, key string) string {
	switch {
	case entity == "":
		return key
	case key == "":
		return entity
	}
	return entity + ": " + key
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// toStringMap accepts the map shapes a YAML decoder produces.
func toStringMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, val := range m {
			out[fmt.Sprint(k)] = val
		}
		return out, true
	}
	return nil, false
}

// describe names the YAML kind of v, never its value.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
		return "a number"
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	}
	return fmt.Sprintf("a %T", v)
}

// suggest returns the known key closest to k, if it is close.
func suggest(k string, known []string) string {
	fold := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	best, bestD := "", 3
	for _, c := range known {
		if fold(c) == fold(k) {
			return c
		}
		if d := levenshtein(fold(k), fold(c)); d < bestD && d < len(c)/2+1 {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// Server block: defaults < environment < YAML < command line, with viper.

// envVars are the process environment, looked up case-insensitively as
// proxy-hopper (pydantic-settings) does; empty values count as unset.
type envVars map[string]string

func newEnv(environ []string) envVars {
	env := envVars{}
	exact := map[string]bool{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			continue
		}
		up := strings.ToUpper(k)
		if !strings.HasPrefix(up, EnvPrefix) {
			continue
		}
		if k == up || !exact[up] {
			env[up] = v
			exact[up] = exact[up] || k == up
		}
	}
	return env
}

// EnvName is the environment variable of a server key.
func EnvName(key string) string { return EnvPrefix + strings.ToUpper(snakeCase(key)) }

// serverKeys are the canonical server keys, in struct order.
func serverKeys() []fieldInfo {
	t := reflect.TypeOf(ServerConfig{})
	keys := keysOf(t)
	out := make([]fieldInfo, 0, len(keys.canonical))
	for _, k := range keys.canonical {
		out = append(out, keys.byName[k])
	}
	return out
}

// decodeServer layers the server block in viper: defaults, then the
// environment and the YAML block as merged config maps (YAML merged last,
// so it wins; a YAML null falls through to the default as proxy-hopper's
// None does), then the command-line overrides with Set. Problems name the
// source of a bad value when it is not the file.
func decodeServer(yamlServer map[string]any, overrides map[string]any, env envVars, p *problems) ServerConfig {
	v := viper.New()
	def := reflect.ValueOf(DefaultServerConfig())
	for i, fi := range serverKeys() {
		v.SetDefault(fi.key, def.Field(i).Interface())
	}

	// Environment, as the lowest configured layer.
	envLayer := map[string]any{}
	sources := map[string]string{}
	for _, fi := range serverKeys() {
		name := EnvName(fi.key)
		val, ok := env[name]
		if !ok {
			continue
		}
		if fi.typ.Kind() == reflect.Slice {
			envLayer[fi.key] = splitList(val)
		} else {
			envLayer[fi.key] = val
		}
		sources[strings.ToLower(fi.key)] = name
	}
	if err := v.MergeConfigMap(envLayer); err != nil {
		p.add("server: environment: %v", err)
	}

	// The YAML server block beats the environment.
	yamlLayer := make(map[string]any, len(yamlServer))
	for k, val := range yamlServer {
		yamlLayer[k] = val
		delete(sources, strings.ToLower(k))
	}
	if err := v.MergeConfigMap(yamlLayer); err != nil {
		p.add("server: %v", err)
	}

	// Command-line flags beat everything.
	keys := keysOf(reflect.TypeOf(ServerConfig{}))
	for _, k := range sortedKeys(overrides) {
		fi, ok := keys.byName[k]
		if !ok {
			msg := fmt.Sprintf("server: unknown setting %q given on the command line", k)
			if s := suggest(k, keys.canonical); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			*p = append(*p, msg)
			continue
		}
		val := overrides[k]
		if s, ok := val.(string); ok && fi.typ.Kind() == reflect.Slice {
			val = splitList(s)
		}
		v.Set(fi.key, val)
		sources[strings.ToLower(fi.key)] = "command-line flag --" + kebabCase(fi.key)
	}

	var s ServerConfig
	err := v.Unmarshal(&s, decoderConfig)
	for _, fe := range fieldErrors(err) {
		canon := fe.name
		if fi, ok := keys.byName[fe.name]; ok {
			canon = fi.key
		} else {
			for _, c := range keys.canonical {
				if strings.EqualFold(c, fe.name) {
					canon = c
				}
			}
		}
		msg := fmt.Sprintf("server: %s: %s", canon, fe.msg)
		if src, ok := sources[strings.ToLower(canon)]; ok {
			msg += fmt.Sprintf(" (from %s)", src)
		}
		*p = append(*p, msg)
	}
	s.LogLevel = strings.ToUpper(strings.TrimSpace(s.LogLevel))
	s.LogFormat = strings.ToLower(strings.TrimSpace(s.LogFormat))
	s.Backend = strings.ToLower(strings.TrimSpace(s.Backend))
	return s
}

// splitList splits a comma-separated value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func kebabCase(s string) string { return strings.ReplaceAll(snakeCase(s), "_", "-") }

// authEnv are the auth keys that PROXY_HOPPER_AUTH_* variables set. Unlike
// the server block they win over the YAML, so secrets can be injected.
var authEnv = []struct{ path, env string }{
	{"enabled", "PROXY_HOPPER_AUTH_ENABLED"},
	{"jwtSecret", "PROXY_HOPPER_AUTH_JWT_SECRET"},
	{"jwtExpiryMinutes", "PROXY_HOPPER_AUTH_JWT_EXPIRY_MINUTES"},
	{"jwtIssuer", "PROXY_HOPPER_AUTH_JWT_ISSUER"},
	{"jwtAudience", "PROXY_HOPPER_AUTH_JWT_AUDIENCE"},
	{"jwtMaxLifetime", "PROXY_HOPPER_AUTH_JWT_MAX_LIFETIME"},
	{"defaultRole", "PROXY_HOPPER_AUTH_DEFAULT_ROLE"},
	{"admin.passwordHash", "PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH"},
	{"oidc.issuer", "PROXY_HOPPER_AUTH_OIDC_ISSUER"},
	{"oidc.audience", "PROXY_HOPPER_AUTH_OIDC_AUDIENCE"},
}

// applyAuthEnv returns auth with the PROXY_HOPPER_AUTH_* values applied,
// and which keys they set. The admin password hash applies only when the
// YAML has an admin user; an issuer creates the oidc block.
func applyAuthEnv(auth map[string]any, env envVars) (map[string]any, map[string]string) {
	out := map[string]any{}
	for k, v := range auth {
		out[k] = v
	}
	from := map[string]string{}
	for _, ae := range authEnv {
		val, ok := env[ae.env]
		if !ok {
			continue
		}
		section, key, nested := strings.Cut(ae.path, ".")
		if !nested {
			out[section] = val
			from[section] = ae.env
			continue
		}
		sub, _ := out[section].(map[string]any)
		if sub == nil && !(section == "oidc" && key == "issuer") {
			continue
		}
		cp := map[string]any{}
		for k, v := range sub {
			cp[k] = v
		}
		cp[key] = val
		out[section] = cp
		from[ae.path] = ae.env
	}
	if len(auth) == 0 && len(from) == 0 {
		return nil, nil
	}
	return out, from
}

// ---------------------------------------------------------------------------
// Resolve: validation and wiring.

// upstream is one parsed ipList entry; port 0 means "the target's
// defaultProxyPort".
type upstream struct {
	host     string
	port     int
	user     string
	pass     string
	hasCreds bool
}

type providerInfo struct {
	cfg     *ProviderConfig
	entries []upstream
	ok      bool
}

type poolInfo struct {
	cfg    *IPPoolConfig
	label  string
	inline []upstream
	ok     bool
}

// Resolve validates the whole config, collecting every problem into one
// *ValidationError, and returns the targets ready to wire, in match order.
// Each target gets its own IP list (and so its own runtime pool), also when
// targets share an ipPool.
func (c *Config) Resolve() ([]ResolvedTarget, error) {
	var p problems
	c.checkServer(&p)
	c.checkProber(&p)
	c.checkTransparent(&p)
	c.checkGateway(&p)
	c.checkAuth(&p)
	c.checkAuthSources(&p)
	c.checkAdmin(&p)
	providers := c.checkProviders(&p)
	pools := c.checkPools(&p, providers)
	targets := c.resolveTargets(&p, providers, pools)
	if err := p.err(); err != nil {
		return nil, err
	}
	return targets, nil
}

func checkPort(p *problems, label, field string, port int) {
	if port < 1 || port > 65535 {
		p.add("%s: %s must be a port from 1 to 65535, got %d", label, field, port)
	}
}

func (c *Config) checkServer(p *problems) {
	s := &c.Server
	if _, err := ParseLevel(s.LogLevel); err != nil {
		p.add("server: logLevel: %q is not a level (want TRACE, DEBUG, INFO, WARNING or ERROR)", s.LogLevel)
	}
	switch strings.ToLower(s.LogFormat) {
	case "", "text", "json":
	default:
		p.add("server: logFormat: %q is not a format (want text or json)", s.LogFormat)
	}
	switch strings.ToLower(s.Backend) {
	case "", "memory":
	case "redis":
		if u, err := url.Parse(s.RedisURL); err != nil || !(u.Scheme == "redis" || u.Scheme == "rediss" || u.Scheme == "unix") {
			p.add("server: redisUrl: not a redis://, rediss:// or unix:// URL")
		}
		if strings.ContainsAny(s.RedisKeyPrefix, "{}") {
			p.add("server: redisKeyPrefix: %q must not contain '{' or '}' (they would change the Redis Cluster hash tag)", s.RedisKeyPrefix)
		}
		if s.RedisLeaseTTL < Duration(time.Second) {
			p.add("server: redisLeaseTtl must be at least 1s, got %s", time.Duration(s.RedisLeaseTTL))
		}
	default:
		p.add("server: backend: %q is not a backend (want memory or redis)", s.Backend)
	}
	checkPort(p, "server", "port", s.Port)
	checkPort(p, "server", "metricsPort", s.MetricsPort)
	checkPort(p, "server", "adminPort", s.AdminPort)
	if s.Probe {
		if s.ProbeInterval <= 0 {
			p.add("server: probeInterval must be more than 0 when probe is on")
		}
		if s.ProbeTimeout <= 0 {
			p.add("server: probeTimeout must be more than 0 when probe is on")
		}
	}
	for i, raw := range s.ProbeURLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.add("server: probeUrls[%d]: not an http:// or https:// URL", i)
		}
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{
		{"connectTimeout", s.ConnectTimeout}, {"idleTimeout", s.IdleTimeout},
		{"headerTimeout", s.HeaderTimeout}, {"shutdownTimeout", s.ShutdownTimeout},
		{"tunnelIdleTimeout", s.TunnelIdleTimeout},
	} {
		if d.v <= 0 {
			p.add("server: %s must be more than 0", d.name)
		}
	}
	if s.MaxBodySize <= 0 {
		p.add("server: maxBodySize must be more than 0")
	}
	if s.RetryBufferSize <= 0 {
		p.add("server: retryBufferSize must be more than 0")
	}
	if s.MetricsTagLimit < 0 || s.MetricsTagLimit > 10000 {
		p.add("server: metricsTagLimit must be from 0 to 10000, got %d", s.MetricsTagLimit)
	}
	if s.RequestLogBurst < 1 {
		p.add("server: requestLogBurst must be at least 1, got %d", s.RequestLogBurst)
	}
	if s.RequestLogInterval < Duration(time.Second) {
		p.add("server: requestLogInterval must be at least 1s, got %s", time.Duration(s.RequestLogInterval))
	}
	parseDestinations(p, "denyDestinations", s.DenyDestinations)
	parseDestinations(p, "allowDestinations", s.AllowDestinations)
	for _, n := range []struct {
		name string
		v    int
	}{{"maxConnections", s.MaxConnections}, {"maxConnectionsPerClient", s.MaxConnectionsPerClient}, {"fdReserve", s.FdReserve}} {
		if n.v < 0 {
			p.add("server: %s must not be negative, got %d", n.name, n.v)
		}
	}
	if s.MaxClientRequests < 0 {
		p.add("server: maxClientRequests must be 0 (no cap) or more, got %d", s.MaxClientRequests)
	}
	if s.MaxClientTunnels < 0 {
		p.add("server: maxClientTunnels must be 0 (no cap) or more, got %d", s.MaxClientTunnels)
	}
}

var permissions = map[string]bool{"read": true, "write": true, "admin": true}

func (c *Config) checkAuth(p *problems) {
	a := &c.Auth
	if a.JWTExpiryMinutes < 1 {
		p.add("auth: jwtExpiryMinutes must be at least 1, got %d", a.JWTExpiryMinutes)
	}
	if a.JWTMaxLifetime < Duration(time.Minute) {
		p.add("auth: jwtMaxLifetime must be at least 1m, got %s", time.Duration(a.JWTMaxLifetime))
	}
	if _, builtin := auth.BuiltinRole(a.DefaultRole); !builtin && a.DefaultRole != "none" {
		if _, custom := a.Roles[a.DefaultRole]; !custom {
			p.add("auth: defaultRole: %q is not a role (want admin, operator, viewer, a role of auth.roles, or none)", a.DefaultRole)
		}
	}
	for i, k := range a.APIKeys {
		label := fmt.Sprintf("auth: apiKeys[%d]", i)
		if k.Name != "" {
			label += " (" + k.Name + ")"
		}
		if k.Name == "" {
			p.add("%s: name is required", label)
		}
		switch {
		case k.Key == "" && k.KeyHash == "":
			p.add("%s: key is required (or keyHash)", label)
		case k.Key != "" && k.KeyHash != "":
			p.add("%s: set key or keyHash, not both", label)
		}
	}
	for _, name := range sortedKeys(anyMap(a.Roles)) {
		for _, perm := range a.Roles[name].Permissions {
			if !permissions[perm] {
				p.add("auth: roles.%s.permissions: %q is not a permission (want read, write or admin)", name, perm)
			}
		}
	}
	if a.Admin != nil {
		if a.Admin.Username == "" {
			p.add("auth: admin.username is required")
		}
		if a.Admin.PasswordHash == "" {
			p.add("auth: admin.passwordHash is required (proxy-hopper hash-password, or PROXY_HOPPER_AUTH_ADMIN_PASSWORD_HASH)")
		}
	}
	if a.OIDC != nil && a.OIDC.Issuer == "" {
		p.add("auth: oidc.issuer is required")
	}
}

func anyMap[V any](m map[string]V) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (c *Config) checkProviders(p *problems) map[string]*providerInfo {
	out := map[string]*providerInfo{}
	first := map[string]int{}
	for i := range c.ProxyProviders {
		pc := &c.ProxyProviders[i]
		label := entityLabel("proxyProviders", i, map[string]any{"name": pc.Name})
		info := &providerInfo{cfg: pc, ok: true}
		if pc.Name == "" {
			p.add("%s: name is required", label)
			info.ok = false
		} else if j, dup := first[pc.Name]; dup {
			p.add("%s: name %q is already used by proxyProviders[%d]", label, pc.Name, j)
		} else {
			first[pc.Name] = i
			out[pc.Name] = info
		}
		if len(pc.IPList) == 0 {
			p.add("%s: ipList is required and must not be empty", label)
			info.ok = false
		}
		var listOK bool
		info.entries, listOK = parseIPList(p, label, pc.IPList)
		info.ok = info.ok && listOK
		if a := pc.Auth; a != nil {
			if a.Type != "" && !strings.EqualFold(a.Type, "basic") {
				p.add("%s: auth.type: %q is not supported (want basic)", label, a.Type)
			}
			if a.Username == "" {
				p.add("%s: auth.username is required", label)
			}
		}
	}
	return out
}

func (c *Config) checkPools(p *problems, providers map[string]*providerInfo) map[string]*poolInfo {
	out := map[string]*poolInfo{}
	first := map[string]int{}
	for i := range c.IPPools {
		pc := &c.IPPools[i]
		label := entityLabel("ipPools", i, map[string]any{"name": pc.Name})
		info := &poolInfo{cfg: pc, label: label, ok: true}
		if pc.Name == "" {
			p.add("%s: name is required", label)
		} else if j, dup := first[pc.Name]; dup {
			p.add("%s: name %q is already used by ipPools[%d]", label, pc.Name, j)
		} else {
			first[pc.Name] = i
			out[pc.Name] = info
		}
		if len(pc.IPRequests) == 0 && len(pc.IPList) == 0 {
			p.add("%s: needs ipRequests or ipList (it has no IPs)", label)
			info.ok = false
		}
		for j, r := range pc.IPRequests {
			switch prov, ok := providers[r.Provider]; {
			case r.Provider == "":
				p.add("%s: ipRequests[%d]: provider is required", label, j)
				info.ok = false
			case !ok:
				p.add("%s: ipRequests[%d]: provider %q is not defined (defined providers: %s)", label, j, r.Provider, namesOf(c.ProxyProviders, func(x ProviderConfig) string { return x.Name }))
				info.ok = false
			case !prov.ok:
				info.ok = false
			}
			if r.Count < 1 {
				p.add("%s: ipRequests[%d]: count must be at least 1, got %d", label, j, r.Count)
				info.ok = false
			}
		}
		var listOK bool
		info.inline, listOK = parseIPList(p, label, pc.IPList)
		info.ok = info.ok && listOK
	}
	return out
}

func namesOf[T any](list []T, name func(T) string) string {
	if len(list) == 0 {
		return "none"
	}
	names := make([]string, len(list))
	for i, x := range list {
		names[i] = name(x)
	}
	return strings.Join(names, ", ")
}

func (c *Config) resolveTargets(p *problems, providers map[string]*providerInfo, pools map[string]*poolInfo) []ResolvedTarget {
	out := make([]ResolvedTarget, 0, len(c.Targets))
	first := map[string]int{}
	for i := range c.Targets {
		t := &c.Targets[i]
		label := entityLabel("targets", i, map[string]any{"name": t.Name})
		rt := ResolvedTarget{Name: t.Name, NumRetries: t.NumRetries}
		if t.Name == "" {
			p.add("%s: name is required", label)
		} else if j, dup := first[t.Name]; dup {
			p.add("%s: name %q is already used by targets[%d]", label, t.Name, j)
		} else {
			first[t.Name] = i
		}
		if t.Regex == "" {
			p.add("%s: regex is required", label)
		} else if re, err := regexp.Compile(t.Regex); err != nil {
			p.add("%s: regex %q is not valid RE2 syntax (Go regexp: no lookaround, no backreferences): %v", label, t.Regex, reErr(err))
		} else {
			rt.Regex = re
		}
		if t.NumRetries < 0 {
			p.add("%s: numRetries must be 0 or more, got %d", label, t.NumRetries)
		}
		rt.MaxClientRetries = t.NumRetries
		if m := t.MaxClientRetries; m != nil {
			rt.MaxClientRetries = *m
			switch {
			case *m > maxHeaderRetries:
				p.add("%s: maxClientRetries must be at most %d (the most %s can say), got %d", label, maxHeaderRetries, "X-Proxy-Hopper-Retries", *m)
			case *m < t.NumRetries:
				p.add("%s: maxClientRetries (%d) must not be below numRetries (%d): the header can always lower the retries", label, *m, t.NumRetries)
			}
		}
		if t.IPFailuresUntilQuarantine < 1 {
			p.add("%s: ipFailuresUntilQuarantine must be at least 1, got %d", label, t.IPFailuresUntilQuarantine)
		}
		checkPort(p, label, "defaultProxyPort", t.DefaultProxyPort)
		checkIdentity(p, label, &t.Identity)
		rt.Pool = pool.Config{
			MinRequestInterval:      t.MinRequestInterval.D(),
			MaxQueueWait:            t.MaxQueueWait.D(),
			FailuresUntilQuarantine: t.IPFailuresUntilQuarantine,
			QuarantineTime:          t.QuarantineTime.D(),
			MaxQueueLength:          t.MaxQueueLength,
		}
		if err := rt.Pool.Validate(); err != nil && t.IPFailuresUntilQuarantine >= 1 {
			p.add("%s: %v", label, err)
		}
		rt.IPs = c.targetIPs(p, label, t, providers, pools)
		rt.TLS = c.targetTLS(p, label, t)
		out = append(out, rt)
	}
	return out
}

// reErr drops the "error parsing regexp: " prefix Go puts on every error.
// maxHeaderRetries is the largest X-Proxy-Hopper-Retries value honoured.
const maxHeaderRetries = 100

func reErr(err error) string {
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}

func checkIdentity(p *problems, label string, id *IdentityConfig) {
	if id.RotateAfterRequests < 0 {
		p.add("%s: identity.rotateAfterRequests must be at least 1 (or left out), got %d", label, id.RotateAfterRequests)
	}
	if w := id.Warmup; w != nil && !strings.HasPrefix(w.Path, "/") {
		p.add("%s: identity.warmup.path must start with /", label)
	}
}

func (c *Config) targetIPs(p *problems, label string, t *TargetConfig, providers map[string]*providerInfo, pools map[string]*poolInfo) []ResolvedIP {
	port := t.DefaultProxyPort
	resolve := func(u upstream, prov *ProviderConfig) ResolvedIP {
		ip := ResolvedIP{Host: u.host, Port: u.port}
		if ip.Port == 0 {
			ip.Port = port
		}
		if prov != nil {
			ip.Provider, ip.Region = prov.Name, prov.RegionTag
			if prov.Auth != nil {
				ip.Username, ip.Password = prov.Auth.Username, prov.Auth.Password
			}
		}
		if u.hasCreds { // credentials in the URL win over the provider's
			ip.Username, ip.Password = u.user, u.pass
		}
		return ip
	}
	var ips []ResolvedIP
	switch {
	case t.IPPool != "" && t.IPList != nil:
		p.add("%s: set either ipPool or ipList, not both", label)
		return nil
	case t.IPPool != "":
		pi, ok := pools[t.IPPool]
		if !ok {
			p.add("%s: ipPool %q is not defined (defined pools: %s)", label, t.IPPool, namesOf(c.IPPools, func(x IPPoolConfig) string { return x.Name }))
			return nil
		}
		if !pi.ok {
			return nil // the pool's problems are reported with the pool
		}
		for _, r := range pi.cfg.IPRequests {
			prov := providers[r.Provider]
			n := min(r.Count, len(prov.entries)) // fewer when the provider has fewer
			for _, u := range prov.entries[:n] {
				ips = append(ips, resolve(u, prov.cfg))
			}
		}
		for _, u := range pi.inline {
			ips = append(ips, resolve(u, nil))
		}
	case t.IPList != nil:
		// An explicitly empty list is a target with no IP for now (see
		// README, Hot reload): its requests wait up to maxQueueWait.
		entries, _ := parseIPList(p, label, t.IPList)
		for _, u := range entries {
			ips = append(ips, resolve(u, nil))
		}
	default:
		p.add("%s: needs ipPool or ipList (neither is set)", label)
		return nil
	}
	seen := map[string]bool{}
	for _, ip := range ips {
		key := canonicalAddr(ip)
		if seen[key] {
			p.add("%s: address %s is listed more than once", label, ip.Addr())
		}
		seen[key] = true
	}
	return ips
}

func canonicalAddr(ip ResolvedIP) string {
	h := strings.ToLower(strings.TrimSuffix(ip.Host, "."))
	if a := net.ParseIP(h); a != nil {
		h = a.String()
	}
	return net.JoinHostPort(h, strconv.Itoa(ip.Port))
}

// targetTLS builds the TLS config for origins of t: nil when neither caFile
// nor tlsInsecureSkipVerify is set. caFile's certificates are added to the
// system roots (not a replacement for them); a relative caFile is read
// from the config file's directory.
func (c *Config) targetTLS(p *problems, label string, t *TargetConfig) *tls.Config {
	if t.CAFile == "" && !t.TLSInsecureSkipVerify {
		return nil
	}
	tc := &tls.Config{InsecureSkipVerify: t.TLSInsecureSkipVerify} //nolint:gosec // the operator asked for it
	if t.CAFile == "" {
		return tc
	}
	path := t.CAFile
	if !filepath.IsAbs(path) && c.baseDir != "" {
		path = filepath.Join(c.baseDir, path)
	}
	data, err := readFileLimited(context.Background(), path, MaxConfigBytes)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		p.add("%s: caFile %q: cannot read it: %v", label, t.CAFile, err)
		return nil
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			p.add("%s: caFile %q: certificate %d: %v", label, t.CAFile, n+1, err)
			return nil
		}
		roots.AddCert(cert)
		n++
	}
	if n == 0 {
		p.add("%s: caFile %q: no PEM certificate in it", label, t.CAFile)
		return nil
	}
	tc.RootCAs = roots
	return tc
}

// parseUpstream reads an ipList entry: host, host:port, [v6], [v6]:port,
// or http://[user:pass@]host[:port] with percent-encoded user and password.
// Its errors never contain credentials.
// parseIPList parses an ipList, reporting each bad entry under label; ok
// is false when any entry was bad.
func parseIPList(p *problems, label string, list []string) (out []upstream, ok bool) {
	ok = true
	for j, e := range list {
		u, err := parseUpstream(e)
		if err != nil {
			p.add("%s: ipList[%d]: %v", label, j, err)
			ok = false
			continue
		}
		out = append(out, u)
	}
	return out, ok
}

func parseUpstream(entry string) (upstream, error) {
	e := strings.TrimSpace(entry)
	if e == "" {
		return upstream{}, errors.New("empty entry")
	}
	if scheme, _, ok := strings.Cut(e, "://"); ok {
		return parseUpstreamURL(e, scheme)
	}
	if strings.Contains(e, "@") {
		return upstream{}, errors.New("credentials are only accepted in the http://user:password@host:port form")
	}
	var host, portStr string
	switch {
	case strings.HasPrefix(e, "["):
		end := strings.Index(e, "]")
		if end < 0 {
			return upstream{}, fmt.Errorf("%q: missing ] after an IPv6 address", e)
		}
		host, portStr = e[1:end], e[end+1:]
		if portStr != "" {
			if !strings.HasPrefix(portStr, ":") {
				return upstream{}, fmt.Errorf("%q: want [ipv6]:port", e)
			}
			portStr = portStr[1:]
			if portStr == "" {
				return upstream{}, fmt.Errorf("%q: empty port", e)
			}
		}
		if ip := net.ParseIP(host); ip == nil || !strings.Contains(host, ":") {
			return upstream{}, fmt.Errorf("%q: not an IPv6 address in brackets", e)
		}
	case strings.Count(e, ":") > 1:
		return upstream{}, errors.New("more than one ':' (an IPv6 address needs brackets, e.g. [2001:db8::1]:3128)")
	case strings.Contains(e, ":"):
		host, portStr, _ = strings.Cut(e, ":")
		if portStr == "" {
			return upstream{}, fmt.Errorf("%q: empty port", e)
		}
	default:
		host = e
	}
	if !strings.Contains(host, ":") {
		if err := checkHost(host); err != nil {
			return upstream{}, err
		}
	}
	u := upstream{host: host}
	if portStr != "" {
		port, err := parsePort(portStr)
		if err != nil {
			return upstream{}, fmt.Errorf("host %q: %w", host, err)
		}
		u.port = port
	}
	return u, nil
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

func parseUpstreamURL(e, scheme string) (upstream, error) {
	if !schemeRE.MatchString(scheme) {
		return upstream{}, fmt.Errorf("%q is not a valid URL", redact(e))
	}
	if !strings.EqualFold(scheme, "http") {
		return upstream{}, fmt.Errorf("scheme %q is not supported: upstream proxies are plain HTTP proxies (http://host:port)", scheme)
	}
	safe := redact(e)
	u, err := url.Parse(e)
	if err != nil {
		return upstream{}, fmt.Errorf("%q is not a valid URL (percent-encode special characters in the user name and password)", safe)
	}
	if u.Host == "" || u.Opaque != "" {
		return upstream{}, fmt.Errorf("%q: missing host", safe)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return upstream{}, fmt.Errorf("%q: want http://[user:password@]host[:port] with no path, query or fragment (percent-encode / ? # in credentials)", safe)
	}
	host := u.Hostname()
	if strings.Contains(host, ":") && net.ParseIP(host) == nil {
		return upstream{}, fmt.Errorf("%q: bad IPv6 address", safe)
	}
	if !strings.Contains(host, ":") {
		if err := checkHost(host); err != nil {
			return upstream{}, err
		}
	}
	out := upstream{host: host}
	if ps := u.Port(); ps != "" {
		port, err := parsePort(ps)
		if err != nil {
			return upstream{}, fmt.Errorf("host %q: %w", host, err)
		}
		out.port = port
	} else if strings.HasSuffix(u.Host, ":") {
		return upstream{}, fmt.Errorf("%q: empty port", safe)
	}
	if u.User != nil {
		out.hasCreds = true
		out.user = u.User.Username()
		out.pass, _ = u.User.Password()
	}
	return out, nil
}

// redact hides the user-info part of an entry: http://***@host:port.
func redact(e string) string {
	at := strings.LastIndex(e, "@")
	if at < 0 {
		return e
	}
	start := 0
	if i := strings.Index(e, "://"); i >= 0 && i < at && schemeRE.MatchString(e[:i]) {
		start = i + 3
	}
	return e[:start] + "***" + e[at:]
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, errors.New("port must be a number from 1 to 65535")
	}
	return n, nil
}

// checkHost accepts IPv4 addresses and DNS names.
func checkHost(h string) error {
	if h == "" {
		return errors.New("missing host")
	}
	for _, r := range h {
		if !(r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Errorf("%q is not a host name or IP address", h)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Summary.

// Summary is what `proxy-hopper validate` prints, in proxy-hopper's shape:
// providers and pools when there are any, "Config OK — N target(s)
// defined." and a line per target, then the server's address and backend.
// It never shows credentials.
func (c *Config) Summary(targets []ResolvedTarget) string {
	var b strings.Builder
	if len(c.ProxyProviders) > 0 {
		fmt.Fprintf(&b, "Providers: %d defined.\n", len(c.ProxyProviders))
		for _, pc := range c.ProxyProviders {
			fmt.Fprintf(&b, "  %s: %d IP(s)", pyRepr(pc.Name), len(pc.IPList))
			if pc.RegionTag != "" {
				fmt.Fprintf(&b, ", region=%s", pyRepr(pc.RegionTag))
			}
			if pc.Auth != nil {
				b.WriteString(", auth=basic\n")
			} else {
				b.WriteString(", auth=none\n")
			}
		}
	}
	if len(c.IPPools) > 0 {
		fmt.Fprintf(&b, "Pools: %d defined.\n", len(c.IPPools))
		for _, pc := range c.IPPools {
			names := make([]string, len(pc.IPRequests))
			for i, r := range pc.IPRequests {
				names[i] = pyRepr(r.Provider)
			}
			fmt.Fprintf(&b, "  %s: %d request(s), providers=[%s]", pyRepr(pc.Name), len(pc.IPRequests), strings.Join(names, ", "))
			if len(pc.IPList) > 0 {
				fmt.Fprintf(&b, ", %d inline IP(s)", len(pc.IPList))
			}
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "Config OK — %d target(s) defined.\n", len(targets))
	for i, t := range targets {
		fmt.Fprintf(&b, "  %s: %d IP(s)", pyRepr(t.Name), len(t.IPs))
		if i < len(c.Targets) && c.Targets[i].Name == t.Name && c.Targets[i].IPPool != "" {
			fmt.Fprintf(&b, ", pool=%s", pyRepr(c.Targets[i].IPPool))
		}
		re := ""
		if t.Regex != nil {
			re = t.Regex.String()
		}
		fmt.Fprintf(&b, ", regex=%s\n", pyRepr(re))
	}
	fmt.Fprintf(&b, "Server defaults: host=%s, port=%d, backend=%s\n", c.Server.Host, c.Server.Port, c.Server.Backend)
	return b.String()
}

// pyRepr quotes s as Python's repr() does, which is how proxy-hopper
// prints names and regexes: 'a\\.b'.
func pyRepr(s string) string {
	q := byte('\'')
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == rune(q):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case !unicode.IsPrint(r) && r <= 0xff:
			fmt.Fprintf(&b, `\x%02x`, r)
		case !unicode.IsPrint(r) && r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		case !unicode.IsPrint(r):
			fmt.Fprintf(&b, `\U%08x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}
