package config

import (
	"fmt"
	"net"
	"reflect"
	"regexp"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// Warnings are what `validate` prints as "warning:" lines on stderr and
// `run` logs as WARN at start-up (and a reload logs): configurations that
// load and run but do not do what they say. None is an error, because
// proxy-hopper configs that worked keep loading:
//
//   - a regex open to more than its author likely meant (RegexWarnings);
//   - a target never selected because an earlier one takes every URL it
//     could match (ShadowedTargets);
//   - the admin API on a non-loopback address over plain HTTP;
//   - keys set that nothing reads: settings under a switch that is off
//     (auth while auth.enabled is false, a target's identity while
//     identity.enabled is false, transparent.local or .gateway while off,
//     the admin, metrics, prober and Redis keys of a feature that is off),
//     and the proxy-hopper keys this version accepts but does not act on
//     (UnreadKeys).
//
// At most MaxProblemsShown lines, the last counting the rest.
func (r *Resolved) Warnings() []string {
	out := RegexWarnings(r.Targets)
	out = append(out, ShadowedTargets(r.Targets)...)
	out = append(out, r.Config.adminWarnings()...)
	out = append(out, r.Config.switchedOffKeys()...)
	out = append(out, r.Config.UnreadKeys()...)
	out = append(out, r.Config.noTargetsWarning()...)
	out = append(out, r.Config.interceptionWarnings()...)
	if len(out) > MaxProblemsShown {
		n := len(out) - MaxProblemsShown
		out = append(out[:MaxProblemsShown], fmt.Sprintf("… and %d more warnings", n))
	}
	return out
}

// catchAllSamples are URLs of every shape a target is matched against
// (scheme://host[:port]/path, and host:port for CONNECT).
var catchAllSamples = []string{
	"", "http://a.example/", "https://b.example:8443/c/d", "c.example:443", "[2001:db8::1]:443", "http://10.0.0.1",
}

// matchesEverything reports whether re, searched in a target URL, matches
// any URL at all: it matches the empty string and every sample shape
// (.*, ^, (.*), ^.*$, .?).
func matchesEverything(re *regexp.Regexp) bool {
	for _, s := range catchAllSamples {
		if !re.MatchString(s) {
			return false
		}
	}
	return true
}

// ShadowedTargets are the targets that can never be selected because an
// earlier target matches first every URL they could match: one with a
// catch-all regex (.* and the like), or one with the very same regex.
// Each line names both targets. Linear in the number of targets.
func ShadowedTargets(targets []ResolvedTarget) []string {
	var out []string
	firstWith := map[string]int{} // regex → first target with it
	catchAll := -1                // first target with a catch-all regex
	for j, t := range targets {
		if t.Regex == nil {
			continue
		}
		src := t.Regex.String()
		i, same := firstWith[src]
		switch {
		case catchAll >= 0 && (!same || catchAll < i):
			e := targets[catchAll]
			out = append(out, shadowed(t.Name, e.Name, fmt.Sprintf("has the catch-all regex %s, which matches every URL", pyRepr(e.Regex.String()))))
		case same:
			out = append(out, shadowed(t.Name, targets[i].Name, "has the same regex"))
		default:
			firstWith[src] = j
			if matchesEverything(t.Regex) {
				catchAll = j
			}
		}
	}
	return out
}

func shadowed(name, by, why string) string {
	return fmt.Sprintf("target %s is never selected: target %s, earlier in the list, %s and targets are matched top to bottom; "+
		"move %s above it or remove it", pyRepr(name), pyRepr(by), why, pyRepr(name))
}

// adminWarnings: the admin API listening beyond loopback in plain HTTP,
// where its bearer token and session cookies cross the network in clear.
// adminSecureCookie says a TLS proxy fronts it, and silences this.
func (c *Config) adminWarnings() []string {
	s := &c.Server
	if !s.Admin || s.AdminSecureCookie || isLoopbackHost(s.AdminHost) {
		return nil
	}
	return []string{fmt.Sprintf("server.admin: the admin API listens on %s over plain HTTP (this version has no TLS for it): "+
		"its token and session cookies cross the network in clear; bind server.adminHost to 127.0.0.1, "+
		"or put a TLS proxy in front and set server.adminSecureCookie: true",
		net.JoinHostPort(s.AdminHost, fmt.Sprint(s.AdminPort)))}
}

// isLoopbackHost reports whether a listen host is only reachable from
// this machine.
func isLoopbackHost(h string) bool {
	h = strings.Trim(strings.TrimSpace(h), "[]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// switchedOffKeys are keys set in the file (or, for auth, the
// environment) to something other than their default under a feature
// that is off, so nothing reads them; one line per feature, naming the
// keys and the switch. A key set to its default changes nothing either
// way (deploy/config.example.yaml lists every key so), and is not named.
func (c *Config) switchedOffKeys() []string {
	var out []string
	// off names the keys of m (set in the document) whose value in got
	// differs from def (both structs of the same type).
	off := func(m map[string]any, prefix, sw string, keys []string, got, def any) {
		var set []string
		for _, k := range keys {
			if v, ok := m[k]; ok && v != nil && !sameAsDefault(got, def, k) {
				set = append(set, prefix+k)
			}
		}
		if len(set) > 0 {
			out = append(out, fmt.Sprintf("%s is off: %s %s set and %s nothing; turn %s on or remove %s",
				sw, strings.Join(set, ", "), plural(len(set), "is", "are"), plural(len(set), "does", "do"), sw, plural(len(set), "it", "them")))
		}
	}
	otherThan := func(m map[string]any, sw string) []string {
		var keys []string
		for _, k := range sortedKeys(m) {
			if k != sw {
				keys = append(keys, k)
			}
		}
		return keys
	}

	if am, _ := c.doc["auth"].(map[string]any); !c.Auth.Enabled && am != nil {
		def := AuthConfig{JWTExpiryMinutes: 60, JWTMaxLifetime: Duration(auth.DefaultJWTMaxLifetime), DefaultRole: auth.DefaultRole}
		off(am, "auth.", "auth.enabled", otherThan(am, "enabled"), c.Auth, def)
	}
	defTarget := DefaultTargetConfig()
	defTarget.setDefaults()
	tl, _ := c.doc["targets"].([]any)
	for i, raw := range tl {
		tm, _ := raw.(map[string]any)
		im, _ := tm["identity"].(map[string]any)
		if im == nil || i >= len(c.Targets) || c.Targets[i].Identity.Enabled {
			continue
		}
		label := entityLabel("targets", i, map[string]any{"name": c.Targets[i].Name})
		before := len(out)
		off(im, "identity.", "identity.enabled", otherThan(im, "enabled"), c.Targets[i].Identity, defTarget.Identity)
		for k := before; k < len(out); k++ {
			out[k] = label + ": " + out[k]
		}
	}
	if tm, _ := c.doc["transparent"].(map[string]any); tm != nil {
		var def TransparentConfig
		def.setDefaults()
		def.Local.Sockmap = orTrue(nil) // left out: on
		got := c.Transparent
		got.setDefaults()
		if lm, _ := tm["local"].(map[string]any); lm != nil && !got.Local.Enabled {
			off(lm, "transparent.local.", "transparent.local.enabled", otherThan(lm, "enabled"), got.Local, def.Local)
		}
		if gm, _ := tm["gateway"].(map[string]any); gm != nil && !got.Gateway.Enabled {
			off(gm, "transparent.gateway.", "transparent.gateway.enabled", otherThan(gm, "enabled"), got.Gateway, def.Gateway)
		}
	}
	if sm, _ := c.doc["server"].(map[string]any); sm != nil {
		s, def := c.Server, DefaultServerConfig()
		if !s.Admin {
			off(sm, "server.", "server.admin", []string{"adminPort", "adminHost", "adminToken", "adminSessionTtl", "adminSecureCookie"}, s, def)
		}
		if !s.Metrics {
			off(sm, "server.", "server.metrics", []string{"metricsPort", "metricsHost", "metricsToken", "metricsTagLimit"}, s, def)
		}
		if !s.Probe {
			off(sm, "server.", "server.probe", []string{"probeInterval", "probeTimeout", "probeUrls", "debugProbes",
				"probeFailuresUntilQuarantine", "probeReleasesQuarantine", "probeMaxPerHour"}, s, def)
		}
		if s.Backend != "redis" {
			off(sm, "server.", "server.backend: redis", []string{"redisUrl", "redisKeyPrefix", "redisLeaseTtl"}, s, def)
		}
	}
	return out
}

// sameAsDefault reports whether the field of key (canonical) holds the
// same value in got as in def; empty lists and mappings count as equal
// to none.
func sameAsDefault(got, def any, key string) bool {
	g, d := reflect.ValueOf(got), reflect.ValueOf(def)
	t := g.Type()
	for i := 0; i < t.NumField(); i++ {
		if strings.Split(t.Field(i).Tag.Get("mapstructure"), ",")[0] != key {
			continue
		}
		gf, df := g.Field(i), d.Field(i)
		switch gf.Kind() {
		case reflect.Slice, reflect.Map:
			if gf.Len() == 0 && df.Len() == 0 {
				return true
			}
		case reflect.Pointer:
			if !gf.IsNil() && !df.IsNil() {
				return reflect.DeepEqual(gf.Elem().Interface(), df.Elem().Interface())
			}
		}
		return reflect.DeepEqual(gf.Interface(), df.Interface())
	}
	return false
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// UnreadKeys are the proxy-hopper keys this version accepts, so that
// proxy-hopper configs load, but does not act on, each named where it is
// set to a value that would change proxy-hopper's behaviour:
// server.debugQuarantine and server.debugBackend (extra DEBUG logging in
// proxy-hopper; nothing here logs more for them). (mutable and static are
// read: they rule the runtime configuration, see agent/runtime.go.)
func (c *Config) UnreadKeys() []string {
	var out []string
	if c.Server.DebugQuarantine {
		out = append(out, "server.debugQuarantine is set but not read by this version (it logs no more: quarantines and releases are always logged, at WARN and INFO); remove it")
	}
	if c.Server.DebugBackend {
		out = append(out, "server.debugBackend is set but not read by this version (no backend debug logging); remove it")
	}
	return out
}

// noTargetsWarning says that a file without targets serves nothing until
// targets are added at run time (GraphQL), as proxy-hopper allows.
func (c *Config) noTargetsWarning() []string {
	if len(c.Targets) > 0 {
		return nil
	}
	return []string{"no targets: every request is refused (no target) until targets are added at run time (GraphQL addTarget, docs/runtime.md)"}
}
