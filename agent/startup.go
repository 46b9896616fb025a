package agent

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// logStarted writes the start-up line, once every part has started: the
// message is proxy-hopper's ("Proxy Hopper running on host:port
// (backend=…, auth=enabled|disabled)", so a query on it keeps matching),
// the attributes say what runs: version, backend (and the Redis address
// without its credentials), the auth state, the modes that are on.
func (a *Agent) logStarted() {
	enabled := "disabled"
	if a.res.Auth.Enabled {
		enabled = "enabled"
	}
	addr := a.ln.Addr().String()
	args := []any{"version", a.opts.Version, "addr", addr, "backend", a.backendName()}
	if a.backendName() == "redis" {
		args = append(args, "redis", redisAddress(a.cfg.Server.RedisURL))
	}
	args = append(args, "auth", authState(a.res.Auth), "modes", a.modes(), "targets", len(a.Targets()))
	if a.adm != nil {
		if srv := a.adm.srv.Load(); srv != nil {
			args = append(args, "admin", srv.Addr().String())
		}
	}
	if a.mx != nil {
		if srv := a.mx.srv.Load(); srv != nil {
			args = append(args, "metrics", srv.Addr().String())
		}
	}
	if ca := a.res.Interception.CA; ca != nil {
		// The CA's fingerprint, to compare with the clients' copies; never the key.
		args = append(args, "interceptionCa", ca.Fingerprint(), "interceptionCaExpires", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	a.log.Info(fmt.Sprintf("Proxy Hopper running on %s (backend=%s, auth=%s)", addr, a.backendName(), enabled), args...)
}

// modes are the parts that run: the proxy listener (explicit proxy,
// CONNECT and header mode), then each optional one that started.
func (a *Agent) modes() []string {
	m := []string{"explicit/header"}
	a.reload.mu.Lock()
	tp := a.tp
	a.reload.mu.Unlock()
	if tp != nil {
		m = append(m, "transparent-local")
	}
	if a.gw.Load() != nil {
		m = append(m, "gateway")
	}
	if a.adm != nil && a.adm.srv.Load() != nil {
		m = append(m, "admin")
	}
	if a.mx != nil && a.mx.srv.Load() != nil {
		m = append(m, "metrics")
	}
	if a.prober != nil {
		m = append(m, "prober")
	}
	if a.minter != nil {
		m = append(m, "tls-interception")
	}
	return m
}

// authState says which credentials the proxy accepts: "off", or a list of
// "api keys N", "jwt", "oidc <issuer>", "admin login".
func authState(c auth.Config) string {
	if !c.Enabled {
		return "off"
	}
	var parts []string
	if n := len(c.APIKeys); n > 0 {
		parts = append(parts, fmt.Sprintf("api keys %d", n))
	}
	if c.JWTSecret != "" {
		parts = append(parts, "jwt")
	}
	if c.OIDC != nil {
		parts = append(parts, "oidc "+redactURL(c.OIDC.Issuer))
	}
	if len(c.Admins) > 0 {
		parts = append(parts, "admin login")
	}
	if len(parts) == 0 {
		return "on, no credentials accepted"
	}
	return strings.Join(parts, ", ")
}

// redisAddress is a Redis URL without its user, password and options.
func redisAddress(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// redactURL is an issuer URL without user info.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	u.User = nil
	return u.String()
}
