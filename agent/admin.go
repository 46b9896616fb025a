package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/prober"
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

	// mu serialises IP list changes; lists are each target's configured
	// IPs (an IP removed while in use drains in the pool but is gone here).
	mu    sync.Mutex
	lists map[string][]string
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
		a: a, rec: admin.NewRecorder(nil, 0), log: a.log.With("component", "admin"),
		addr:  net.JoinHostPort(s.AdminHost, strconv.Itoa(s.AdminPort)),
		lists: map[string][]string{},
	}
}

// poolHooks returns h with the recorder's quarantine events added.
func (x *agentAdmin) poolHooks(target string, addrs []string, h pool.Hooks) pool.Hooks {
	if x == nil {
		return h
	}
	x.mu.Lock()
	x.lists[target] = slices.Clone(addrs)
	x.mu.Unlock()
	q, r := h.Quarantined, h.Released
	h.Quarantined = func(addr string, until time.Time) {
		if q != nil {
			q(addr, until)
		}
		x.rec.Quarantined(target, addr, until)
	}
	h.Released = func(addr string) {
		if r != nil {
			r(addr)
		}
		x.rec.Released(target, addr)
	}
	return h
}

// proxyHooks returns h followed by the recorder's hooks.
func (x *agentAdmin) proxyHooks(h proxy.Hooks) proxy.Hooks {
	if x == nil {
		return h
	}
	return proxy.Hooks{
		Attempt: func(ev proxy.AttemptEvent) {
			if h.Attempt != nil {
				h.Attempt(ev)
			}
			x.rec.Attempt(ev)
		},
		Request: func(ev proxy.RequestEvent) {
			if h.Request != nil {
				h.Request(ev)
			}
			x.rec.Request(ev)
		},
	}
}

// start opens the admin endpoint and serves it in the background.
func (x *agentAdmin) start(ctx context.Context) error {
	if x == nil {
		return nil
	}
	a := x.a
	srv, err := admin.New(admin.Options{
		Token:       a.cfg.Server.AdminToken,
		Targets:     a.Targets,
		Backend:     a.backend,
		BackendName: a.backendName(),
		IPs:         x,
		Probes:      x.probes(),
		Recorder:    x.rec,
		Logger:      a.log,
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
	go func() {
		defer close(x.done)
		if err := srv.Serve(); err != nil {
			x.log.Error("admin endpoint stopped", "err", err)
		}
	}()
	return nil
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

func (x *agentAdmin) target(name string) *proxy.Target {
	for _, t := range x.a.targets {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// IPs implements admin.IPEditor.
func (x *agentAdmin) IPs(target string) ([]string, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	l, ok := x.lists[target]
	return slices.Clone(l), ok
}

// AddIP implements admin.IPEditor: the IP joins the pool as available and
// takes traffic at once (a request waiting for an IP gets it). It has no
// credentials, provider or region: those come from the config file.
func (x *agentAdmin) AddIP(ctx context.Context, target, addr string) error {
	t := x.target(target)
	if t == nil {
		return admin.ErrUnknownTarget
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	cur := x.lists[target]
	if slices.Contains(cur, addr) {
		return admin.ErrIPExists
	}
	next := append(slices.Clone(cur), addr)
	if err := t.Pool.Update(ctx, next, t.Pool.Config()); err != nil {
		return fmt.Errorf("add %s to target %s: %w", addr, target, err)
	}
	x.lists[target] = next
	x.syncProber()
	return nil
}

// RemoveIP implements admin.IPEditor: the IP leaves the pool; if it is in
// use, that use finishes first (it drains), then it is gone.
func (x *agentAdmin) RemoveIP(ctx context.Context, target, addr string) error {
	t := x.target(target)
	if t == nil {
		return admin.ErrUnknownTarget
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	cur := x.lists[target]
	i := slices.Index(cur, addr)
	if i < 0 {
		return admin.ErrUnknownIP
	}
	// pool.Pool.Update refuses an empty list for now; the hot-reload work
	// makes it accept one (a target with no IPs queues, then 503s). Until
	// that is merged, the last IP cannot be removed.
	if len(cur) == 1 {
		return admin.ErrLastIP
	}
	next := slices.Delete(slices.Clone(cur), i, i+1)
	if err := t.Pool.Update(ctx, next, t.Pool.Config()); err != nil {
		return fmt.Errorf("remove %s from target %s: %w", addr, target, err)
	}
	x.lists[target] = next
	if t.Identity != nil {
		t.Identity.Forget(addr)
	}
	x.syncProber()
	return nil
}

// syncProber makes the prober probe the IP lists as edited: added IPs
// from the next round on, removed ones no more. Caller holds x.mu.
func (x *agentAdmin) syncProber() {
	p := x.a.prober
	if p == nil {
		return
	}
	targets := make([]prober.Target, 0, len(x.a.targets))
	for _, t := range x.a.targets {
		ups := make(map[string]proxy.Upstream, len(x.lists[t.Name]))
		for _, addr := range x.lists[t.Name] {
			up, ok := t.Upstreams[addr]
			if !ok {
				up = proxy.Upstream{Addr: addr} // added through the API: no credentials
			}
			ups[addr] = up
		}
		targets = append(targets, prober.Target{Name: t.Name, Pool: t.Pool, Upstreams: ups})
	}
	p.SetTargets(targets)
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
