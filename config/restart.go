package config

import (
	"maps"
	"slices"
)

// RestartKeys names the keys of the sections that only take effect at
// start-up (server, auth, transparent, interception) whose value in next differs from
// the running one, in the order of the sections' fields: what a reload
// keeps at its running value and names in its WARN. The comparison is
// written out key by key (TestRestartKeysCoverEveryKey checks that no key
// is missing): these sections hold lists, maps and optional blocks, so no
// plain == of the sections would do.
func RestartKeys(running, next *Config) []string {
	var d keyDiff
	d.server(&running.Server, &next.Server)
	d.auth(&running.Auth, &next.Auth)
	d.transparent(&running.Transparent, &next.Transparent)
	d.interception(&running.Interception, &next.Interception)
	return d.keys
}

// keyDiff collects the keys whose values differ.
type keyDiff struct{ keys []string }

func (d *keyDiff) add(key string, same bool) {
	if !same {
		d.keys = append(d.keys, key)
	}
}

// ptrEq compares optional values (nil: not set).
func ptrEq[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func (d *keyDiff) server(a, b *ServerConfig) {
	d.add("server.host", a.Host == b.Host)
	d.add("server.port", a.Port == b.Port)
	d.add("server.logLevel", a.LogLevel == b.LogLevel)
	d.add("server.logFormat", a.LogFormat == b.LogFormat)
	d.add("server.logFile", a.LogFile == b.LogFile)
	d.add("server.backend", a.Backend == b.Backend)
	d.add("server.redisUrl", a.RedisURL == b.RedisURL)
	d.add("server.metrics", a.Metrics == b.Metrics)
	d.add("server.metricsPort", a.MetricsPort == b.MetricsPort)
	d.add("server.probe", a.Probe == b.Probe)
	d.add("server.probeInterval", a.ProbeInterval == b.ProbeInterval)
	d.add("server.probeTimeout", a.ProbeTimeout == b.ProbeTimeout)
	d.add("server.probeUrls", slices.Equal(a.ProbeURLs, b.ProbeURLs))
	d.add("server.proxyReadTimeout", a.ProxyReadTimeout == b.ProxyReadTimeout)
	d.add("server.admin", a.Admin == b.Admin)
	d.add("server.adminPort", a.AdminPort == b.AdminPort)
	d.add("server.adminHost", a.AdminHost == b.AdminHost)
	d.add("server.debugProbes", a.DebugProbes == b.DebugProbes)
	d.add("server.debugQuarantine", a.DebugQuarantine == b.DebugQuarantine)
	d.add("server.debugBackend", a.DebugBackend == b.DebugBackend)
	d.add("server.connectTimeout", a.ConnectTimeout == b.ConnectTimeout)
	d.add("server.idleTimeout", a.IdleTimeout == b.IdleTimeout)
	d.add("server.headerTimeout", a.HeaderTimeout == b.HeaderTimeout)
	d.add("server.maxBodySize", a.MaxBodySize == b.MaxBodySize)
	d.add("server.retryBufferSize", a.RetryBufferSize == b.RetryBufferSize)
	d.add("server.shutdownTimeout", a.ShutdownTimeout == b.ShutdownTimeout)
	d.add("server.tunnelIdleTimeout", a.TunnelIdleTimeout == b.TunnelIdleTimeout)
	d.add("server.redisKeyPrefix", a.RedisKeyPrefix == b.RedisKeyPrefix)
	d.add("server.redisLeaseTtl", a.RedisLeaseTTL == b.RedisLeaseTTL)
	d.add("server.watchConfig", a.WatchConfig == b.WatchConfig)
	d.add("server.adminToken", a.AdminToken == b.AdminToken)
	d.add("server.adminSessionTtl", a.AdminSessionTTL == b.AdminSessionTTL)
	d.add("server.adminSecureCookie", a.AdminSecureCookie == b.AdminSecureCookie)
	d.add("server.metricsHost", a.MetricsHost == b.MetricsHost)
	d.add("server.metricsToken", a.MetricsToken == b.MetricsToken)
	d.add("server.maxClientRequests", a.MaxClientRequests == b.MaxClientRequests)
	d.add("server.maxClientTunnels", a.MaxClientTunnels == b.MaxClientTunnels)
	d.add("server.probeFailuresUntilQuarantine", a.ProbeFailuresUntilQuarantine == b.ProbeFailuresUntilQuarantine)
	d.add("server.probeReleasesQuarantine", a.ProbeReleasesQuarantine == b.ProbeReleasesQuarantine)
	d.add("server.probeMaxPerHour", a.ProbeMaxPerHour == b.ProbeMaxPerHour)
	d.add("server.metricsTagLimit", a.MetricsTagLimit == b.MetricsTagLimit)
	d.add("server.requestLogBurst", a.RequestLogBurst == b.RequestLogBurst)
	d.add("server.requestLogInterval", a.RequestLogInterval == b.RequestLogInterval)
	d.add("server.denyDestinations", slices.Equal(a.DenyDestinations, b.DenyDestinations))
	d.add("server.allowDestinations", slices.Equal(a.AllowDestinations, b.AllowDestinations))
	d.add("server.maxConnections", a.MaxConnections == b.MaxConnections)
	d.add("server.maxConnectionsPerClient", a.MaxConnectionsPerClient == b.MaxConnectionsPerClient)
	d.add("server.fdReserve", a.FdReserve == b.FdReserve)
}

func (d *keyDiff) auth(a, b *AuthConfig) {
	d.add("auth.enabled", a.Enabled == b.Enabled)
	d.add("auth.jwtSecret", a.JWTSecret == b.JWTSecret)
	d.add("auth.jwtExpiryMinutes", a.JWTExpiryMinutes == b.JWTExpiryMinutes)
	d.add("auth.jwtIssuer", a.JWTIssuer == b.JWTIssuer)
	d.add("auth.jwtAudience", a.JWTAudience == b.JWTAudience)
	d.add("auth.jwtMaxLifetime", a.JWTMaxLifetime == b.JWTMaxLifetime)
	d.add("auth.defaultRole", a.DefaultRole == b.DefaultRole)
	d.add("auth.apiKeys", slices.EqualFunc(a.APIKeys, b.APIKeys, func(x, y APIKeyConfig) bool {
		return x.Name == y.Name && x.Key == y.Key && x.KeyHash == y.KeyHash && slices.Equal(x.Targets, y.Targets)
	}))
	d.add("auth.roles", maps.EqualFunc(a.Roles, b.Roles, func(x, y RoleConfig) bool {
		return slices.Equal(x.Permissions, y.Permissions) && slices.Equal(x.Targets, y.Targets)
	}))
	d.add("auth.admin", ptrEq(a.Admin, b.Admin))
	d.add("auth.oidc", ptrEq(a.OIDC, b.OIDC))
	d.add("auth.transparent.allowCidrs", slices.EqualFunc(a.Transparent.AllowCIDRs, b.Transparent.AllowCIDRs, func(x, y CIDRRuleConfig) bool {
		return x.CIDR == y.CIDR && slices.Equal(x.Targets, y.Targets)
	}))
}

func (d *keyDiff) transparent(ta, tb *TransparentConfig) {
	d.add("transparent.unmatched", ta.Unmatched == tb.Unmatched)
	{
		a, b := &ta.Local, &tb.Local
		d.add("transparent.local.enabled", a.Enabled == b.Enabled)
		d.add("transparent.local.cgroups", slices.Equal(a.Cgroups, b.Cgroups))
		d.add("transparent.local.ports", slices.Equal(a.Ports, b.Ports))
		d.add("transparent.local.includeCidrs", slices.Equal(a.IncludeCIDRs, b.IncludeCIDRs))
		d.add("transparent.local.excludeCidrs", slices.Equal(a.ExcludeCIDRs, b.ExcludeCIDRs))
		d.add("transparent.local.sockmap", ptrEq(a.Sockmap, b.Sockmap))
		d.add("transparent.local.port", a.Port == b.Port)
		d.add("transparent.local.mark", a.Mark == b.Mark)
		d.add("transparent.local.pinned", a.Pinned == b.Pinned)
		d.add("transparent.local.pinDir", a.PinDir == b.PinDir)
	}
	{
		a, b := &ta.Gateway, &tb.Gateway
		d.add("transparent.gateway.enabled", a.Enabled == b.Enabled)
		d.add("transparent.gateway.interfaces", slices.Equal(a.Interfaces, b.Interfaces))
		d.add("transparent.gateway.uplinks", slices.Equal(a.Uplinks, b.Uplinks))
		d.add("transparent.gateway.ports", slices.Equal(a.Ports, b.Ports))
		d.add("transparent.gateway.includeCidrs", slices.Equal(a.IncludeCIDRs, b.IncludeCIDRs))
		d.add("transparent.gateway.excludeCidrs", slices.Equal(a.ExcludeCIDRs, b.ExcludeCIDRs))
		d.add("transparent.gateway.sourceCidrs", slices.Equal(a.SourceCIDRs, b.SourceCIDRs))
		d.add("transparent.gateway.port", a.Port == b.Port)
		d.add("transparent.gateway.mark", a.Mark == b.Mark)
		d.add("transparent.gateway.table", a.Table == b.Table)
		d.add("transparent.gateway.rulePriority", a.RulePriority == b.RulePriority)
		d.add("transparent.gateway.tcAttach", a.TCAttach == b.TCAttach)
		d.add("transparent.gateway.maxIpEntries", a.MaxIPEntries == b.MaxIPEntries)
		d.add("transparent.gateway.maxClientEntries", a.MaxClientEntries == b.MaxClientEntries)
	}
}

func (d *keyDiff) interception(a, b *InterceptionConfig) {
	d.add("interception.caCert", a.CACert == b.CACert)
	d.add("interception.caKey", a.CAKey == b.CAKey)
	d.add("interception.bypassDomains", slices.Equal(a.BypassDomains, b.BypassDomains))
	d.add("interception.bypassRegex", slices.Equal(a.BypassRegex, b.BypassRegex))
}
