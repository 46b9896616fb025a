package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"go.yaml.in/yaml/v3"
)

// Load reads the YAML config at path. overrides are server keys set on the
// command line (camelCase, e.g. "port", "logLevel", "probeUrls"); a server
// key is taken, highest first, from overrides, the file's server block,
// PROXY_HOPPER_* environment variables, then the defaults. Unknown keys and
// values of the wrong type are reported together as a *ValidationError;
// with it Load still returns the Config, every field that did decode set
// and every bad one left at its default, so that LoadResolved can report
// the problems Resolve finds too. Load does not check values; Resolve
// does.
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
	if cfg != nil {
		if abs, aerr := filepath.Abs(path); aerr == nil {
			cfg.baseDir = filepath.Dir(abs)
		}
	}
	return cfg, err
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
// keys (role names) keep their case, which viper would lower-case. On
// problems it returns them with the Config as far as it decoded (nil only
// when the top level is not a mapping).
func fromDocument(doc any, overrides map[string]any, env envVars) (*Config, error) {
	var p problems
	empty := doc == nil
	if doc == nil {
		doc = map[string]any{}
	}
	if _, ok := toStringMap(doc); !ok {
		return nil, &ValidationError{Problems: []string{"config: the top level must be a mapping (server, auth, proxyProviders, ipPools, targets)"}}
	}
	n := normalizer{p: &p}
	root, _ := n.walk(doc, reflect.TypeOf(Config{}), "", "").(map[string]any)

	if root == nil {
		root = map[string]any{}
	}
	cfg := &Config{empty: empty, doc: root}
	srvMap, _ := root["server"].(map[string]any)
	cfg.Server = decodeServer(srvMap, overrides, env, &p)

	authMap, _ := root["auth"].(map[string]any)
	authMap, fromEnv := applyAuthEnv(authMap, env)
	if authMap != nil {
		root["auth"] = authMap
	}
	cfg.Auth = AuthConfig{JWTExpiryMinutes: 60, JWTMaxLifetime: Duration(auth.DefaultJWTMaxLifetime), DefaultRole: auth.DefaultRole}
	decodeSection(authMap, &cfg.Auth, "auth", fromEnv, &p)
	cfg.Auth.setDefaults()

	decodeEntities(root, cfg, &p)
	decodeSection(root["transparent"], &cfg.Transparent, "transparent", nil, &p)
	decodeSection(root["interception"], &cfg.Interception, "interception", nil, &p)
	return cfg, p.err()
}

func orTrue(b *bool) *bool {
	if b != nil {
		return b
	}
	t := true
	return &t
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

// ReadFile reads a config file as Load does: at most MaxConfigBytes, a
// FIFO or pipe cut after a bounded wait or when ctx ends.
func ReadFile(ctx context.Context, path string) ([]byte, error) {
	return readFileLimited(ctx, path, MaxConfigBytes)
}
