package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// agentAdmin is the agent's admin API and status page (server.admin): the
// recorder fed by the proxy and pool hooks, the IP lists it edits, and the
// server on adminHost:adminPort. A nil *agentAdmin (admin off) is valid and
// does nothing.
type agentAdmin struct {
	a    *Agent
	rec  *admin.Recorder
	addr string
	log  *slog.Logger
	srv  atomic.Pointer[admin.Server] // set by start
	done chan struct{}
	// started is when the agent was built (the page's uptime).
	started time.Time
}

var _ admin.IPEditor = (*agentAdmin)(nil)

// newAgentAdmin prepares the admin side when server.admin is on. Call it
// before the pools are built: their hooks feed its recorder.
func newAgentAdmin(a *Agent) *agentAdmin {
	s := a.cfg.Server
	if !s.Admin {
		return nil
	}
	return &agentAdmin{
		a: a, rec: admin.NewRecorder(nil, 0), log: a.log.With("component", "admin"), started: time.Now(),
		addr: net.JoinHostPort(s.AdminHost, strconv.Itoa(s.AdminPort)),
	}
}

// poolHooks returns h with the recorder's quarantine events (with their
// cause) added.
func (x *agentAdmin) poolHooks(target string, h pool.Hooks) pool.Hooks {
	if x == nil {
		return h
	}
	return h.Then(pool.Hooks{
		QuarantinedWhy: func(addr string, until time.Time, cause string) { x.rec.Quarantined(target, addr, until, cause) },
		Released:       func(addr string) { x.rec.Released(target, addr) },
	})
}

// proxyHooks returns h followed by the recorder's hooks.
func (x *agentAdmin) proxyHooks(h proxy.Hooks) proxy.Hooks {
	if x == nil {
		return h
	}
	return h.Then(proxy.Hooks{Attempt: x.rec.Attempt, Request: x.rec.Request})
}

// login is POST /auth/login when auth has a local admin user (else nil:
// 404, as proxy-hopper). Its JWTs are good on the proxy and here.
func (x *agentAdmin) login() http.Handler {
	a := x.a
	if !a.authn.LoginConfigured() {
		return nil
	}
	return auth.NewLoginHandler(func() *auth.Authenticator { return a.authn }, auth.LoginOptions{Log: x.log})
}

// start opens the admin endpoint and serves it in the background.
func (x *agentAdmin) start(ctx context.Context) error {
	if x == nil {
		return nil
	}
	a := x.a
	srv, err := admin.New(admin.Options{
		Token:        a.cfg.Server.AdminToken,
		Auth:         a.authn,
		Login:        x.login(),
		Repository:   repository{a},
		AuthEnabled:  a.authn.Enabled(),
		Targets:      a.Targets,
		Backend:      a.backend,
		BackendName:  a.backendName(),
		IPs:          x,
		Probes:       x.probes(),
		Recorder:     x.rec,
		Version:      a.opts.Version,
		Started:      x.started,
		Bytes:        x.bytes(),
		Logger:       a.log,
		SessionTTL:   time.Duration(a.cfg.Server.AdminSessionTTL),
		SecureCookie: a.cfg.Server.AdminSecureCookie,
	})
	if err != nil {
		return err
	}
	if err := srv.Listen(ctx, x.addr); err != nil {
		return err
	}
	x.srv.Store(srv)
	x.done = make(chan struct{})
	x.log.Info("admin listening", "addr", srv.Addr().String())
	if a.cfg.Server.AdminToken == "" && !a.authn.Enabled() {
		x.log.Warn("the admin API is open to read for whoever reaches it and refuses changes: set server.adminToken, or turn auth on and use JWTs",
			"addr", srv.Addr().String())
	}
	go func() {
		defer close(x.done)
		if err := srv.Serve(); err != nil {
			x.log.Error("admin endpoint stopped", "err", err)
		}
	}()
	return nil
}

// bytes gives the page the gateway's BPF byte counters per upstream IP
// address (nil when gateway mode is not configured; none while it is not
// running).
func (x *agentAdmin) bytes() func() (map[netip.Addr]admin.ByteCounts, error) {
	a := x.a
	if !a.cfg.Transparent.Gateway.Enabled {
		return nil
	}
	return func() (map[netip.Addr]admin.ByteCounts, error) {
		ips, _, err := a.gatewayCounters()
		if err != nil {
			return nil, fmt.Errorf("read gateway counters: %w", err)
		}
		out := make(map[netip.Addr]admin.ByteCounts, len(ips)/2+1)
		for _, c := range ips {
			b := out[c.IP]
			switch c.Direction {
			case "in":
				b.In += c.Bytes
			case "out":
				b.Out += c.Bytes
			default:
				continue
			}
			out[c.IP] = b
		}
		return out, nil
	}
}

// probes gives the admin API the prober's last result per IP (nil when
// server.probe is off).
func (x *agentAdmin) probes() admin.ProbeSource {
	p := x.a.prober
	if p == nil {
		return nil
	}
	return admin.ProbeFunc(func(addr string) (admin.ProbeResult, bool) {
		st, ok := p.Status(addr)
		if !ok {
			return admin.ProbeResult{}, false
		}
		return admin.ProbeResult{OK: st.OK, Latency: st.Latency, At: st.At, Reason: st.Reason}, true
	})
}

// stopping makes /readyz answer 503 while the agent shuts down.
func (x *agentAdmin) stopping() {
	if x != nil && x.srv.Load() != nil {
		x.srv.Load().Stopping()
	}
}

// stop closes the admin endpoint, giving requests in progress a moment.
func (x *agentAdmin) stop() {
	if x == nil || x.srv.Load() == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = x.srv.Load().Shutdown(ctx)
	<-x.done
}

// IPs implements admin.IPEditor: the target's IPs in force (an IP removed
// while in use drains in the pool but is gone here).
func (x *agentAdmin) IPs(target string) ([]string, bool) {
	st := &x.a.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	r, ok := st.rts[target]
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(r.res.IPs))
	for _, ip := range r.res.IPs {
		out = append(out, ip.Addr())
	}
	return out, true
}

// AddIP implements admin.IPEditor: the IP joins the pool as available and
// takes traffic at once (a request waiting for an IP gets it). It has no
// credentials, provider or region: those come from the config file. The
// edit is kept in the runtime store (runtime.go).
func (x *agentAdmin) AddIP(ctx context.Context, target, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: bad port", addr)
	}
	err = x.a.editIPs(ctx, target, func(ips []config.ResolvedIP) ([]config.ResolvedIP, error) {
		if slices.ContainsFunc(ips, func(ip config.ResolvedIP) bool { return ip.Addr() == addr }) {
			return nil, admin.ErrIPExists
		}
		return append(ips, config.ResolvedIP{Host: host, Port: n}), nil
	})
	return x.editErr(err, "add", addr, target)
}

// RemoveIP implements admin.IPEditor: the IP leaves the pool; if it is in
// use, that use finishes first (it drains), then it is gone. Removing the
// last IP leaves the target with none: its requests wait up to
// maxQueueWait, then get 503, until an IP is added.
func (x *agentAdmin) RemoveIP(ctx context.Context, target, addr string) error {
	err := x.a.editIPs(ctx, target, func(ips []config.ResolvedIP) ([]config.ResolvedIP, error) {
		i := slices.IndexFunc(ips, func(ip config.ResolvedIP) bool { return ip.Addr() == addr })
		if i < 0 {
			return nil, admin.ErrUnknownIP
		}
		return slices.Delete(ips, i, i+1), nil
	})
	return x.editErr(err, "remove", addr, target)
}

func (x *agentAdmin) editErr(err error, verb, addr, target string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errUnknownTarget):
		return admin.ErrUnknownTarget
	case errors.Is(err, admin.ErrIPExists), errors.Is(err, admin.ErrUnknownIP):
		return err
	}
	return fmt.Errorf("%s %s, target %s: %w", verb, addr, target, err)
}

// AdminAddr is where the admin API is served once Run has started (nil
// when server.admin is off or before Run).
func (a *Agent) AdminAddr() net.Addr {
	if a.adm == nil {
		return nil
	}
	if srv := a.adm.srv.Load(); srv != nil {
		return srv.Addr()
	}
	return nil
}
