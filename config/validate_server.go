package config

import (
	"log/slog"
	"net/url"
	"strings"
	"time"
)

func checkPort(p *problems, label, field string, port int) {
	if port < 1 || port > 65535 {
		p.add("%s: %s must be a port from 1 to 65535, got %d", label, field, port)
	}
}

// checkServer validates the server block and returns what it parses: the
// log level and the destination lists.
func (c *Config) checkServer(p *problems) (slog.Level, Destinations) {
	s := &c.Server
	level, err := ParseLevel(s.LogLevel)
	if err != nil {
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
	var d Destinations
	d.Deny, d.DenyNames = parseDestinations(p, "denyDestinations", s.DenyDestinations)
	d.Allow, d.AllowNames = parseDestinations(p, "allowDestinations", s.AllowDestinations)
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
	return level, d
}

// checkProber validates the prober keys proxy-hopper does not have.
func (c *Config) checkProber(p *problems) {
	s := &c.Server
	if s.ProbeFailuresUntilQuarantine < 0 {
		p.add("server: probeFailuresUntilQuarantine must not be negative (0 turns it off), got %d", s.ProbeFailuresUntilQuarantine)
	}
	if s.ProbeMaxPerHour < 0 {
		p.add("server: probeMaxPerHour must not be negative (0 is no cap), got %d", s.ProbeMaxPerHour)
	}
}
