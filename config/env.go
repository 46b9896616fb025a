package config

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/spf13/viper"
)

// The environment, and the server block: defaults < environment < YAML <
// command line, with viper.

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
