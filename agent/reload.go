package agent

// Hot reload. A reload re-reads the config file the agent started from
// (the same Load as at startup, with the same CLI overrides, the
// environment read again), validates it in full, and applies its targets,
// ipPools and proxyProviders to the running agent:
//
//   - Each target name keeps one runtime across reloads: its pool.Pool
//     (Update reconciles IPs and policy: new IPs are handed out at once,
//     removed IPs drain), its identity store (Update, and removed IPs'
//     identities forgotten) and its pool hooks (swapped through a pointer,
//     so the metrics labels follow the IPs).
//   - A new generation of proxy.Target values is published with one atomic
//     store (proxy.Server.SetTargets): a request matches either the old or
//     the new table. Requests in flight finish on the target they matched.
//   - Targets added get a pool; targets removed stop matching, their pool's
//     release timer stops, and their upstream connections close as their
//     last requests end.
//
// Keys that only take effect at startup (the server, auth and transparent
// sections) are compared with the running values (config.RestartKeys);
// each one that differs is named in one WARN and keeps its running value, and the rest applies. A
// config that does not load or validate is rejected in full with the
// message `validate` prints, and the running config stays.
//
// Applying runs in named steps: planReload (nothing running is touched),
// applyPlan (added targets' pools, the new generation published, kept
// targets' pools updated), rollBack on a failure, else commit.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
	"github.com/proxy-hopper/proxy-hopper/store"
)

// reloadTimeout bounds the backend operations of one reload.
const reloadTimeout = 30 * time.Second

// ReloadResult says what one applied reload changed.
type ReloadResult struct {
	Added, Removed, Changed []string // target names
	IPsAdded, IPsRemoved    int      // over all targets
	// RestartRequired names the keys (server.port, auth.apiKeys, ...) whose
	// new value waits for a restart; their running value stays.
	RestartRequired []string
}

// targetRT is the runtime of one target name, kept across reloads.
type targetRT struct {
	name   string
	pool   *pool.Pool
	ids    *identity.Store // nil: identity off
	hooks  atomic.Pointer[pool.Hooks]
	res    config.ResolvedTarget // as applied
	tc     config.TargetConfig   // as applied
	target *proxy.Target         // the current generation
}

// reloadState is the agent's reload side; mu serialises reloads.
type reloadState struct {
	mu       sync.Mutex
	cfg      *config.Config // the config in force: the file's, with the runtime store's entities
	rts      map[string]*targetRT
	fileHash [sha256.Size]byte // of the config file last loaded by ReloadFile or the watcher start

	// The runtime store's side (runtime.go).
	file     *config.Config // the config file as last loaded: the base the store's entities resolve against
	doc      store.Doc      // the store version in force
	applied  string         // its store.Doc.ID (also of a version that failed to apply, so it is not retried)
	needSeed bool           // the store did not answer at start: seed it when it does
}

// rtsByName returns the runtime of a target name, if it has one.
func (st *reloadState) rtsByName(name string) (*targetRT, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r, ok := st.rts[name]
	return r, ok
}

func (st *reloadState) closePools() {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, r := range st.rts {
		r.pool.Close()
	}
}

// poolHooks are the hooks a target's pool is created with: they call the
// current generation's hooks.
func (r *targetRT) poolHooks() pool.Hooks {
	return pool.Hooks{
		Quarantined: func(addr string, until time.Time) {
			if h := r.hooks.Load(); h != nil && h.Quarantined != nil {
				h.Quarantined(addr, until)
			}
		},
		QuarantinedWhy: func(addr string, until time.Time, cause string) {
			if h := r.hooks.Load(); h != nil && h.QuarantinedWhy != nil {
				h.QuarantinedWhy(addr, until, cause)
			}
		},
		Released: func(addr string) {
			if h := r.hooks.Load(); h != nil && h.Released != nil {
				h.Released(addr)
			}
		},
	}
}

// generationHooks are the pool hooks of one generation of a target.
func (a *Agent) generationHooks(name string, ids *identity.Store, ups map[string]proxy.Upstream) *pool.Hooks {
	var h pool.Hooks
	if ids != nil {
		// A quarantined IP comes back with a fresh identity.
		h.Released = func(addr string) { ids.Rotate(addr, identity.ReasonQuarantine) }
	}
	h = a.mx.poolHooks(name, ups, h)
	h = a.adm.poolHooks(name, h)
	return &h
}

// upstreamsOf returns the pool addresses of a resolved target and their
// upstream details.
func upstreamsOf(rt config.ResolvedTarget) ([]string, map[string]proxy.Upstream) {
	addrs := make([]string, 0, len(rt.IPs))
	ups := make(map[string]proxy.Upstream, len(rt.IPs))
	for _, ip := range rt.IPs {
		addr := ip.Addr()
		addrs = append(addrs, addr)
		ups[addr] = proxy.Upstream{Addr: addr, Username: ip.Username, Password: ip.Password, Provider: ip.Provider, Region: ip.Region}
	}
	return addrs, ups
}

func (r *targetRT) proxyTarget(rt config.ResolvedTarget, ups map[string]proxy.Upstream) *proxy.Target {
	return &proxy.Target{
		Name: rt.Name, Regex: rt.Regex, Pool: r.pool, Upstreams: ups, NumRetries: rt.NumRetries, MaxClientRetries: rt.MaxClientRetries, TLS: rt.TLS, Identity: r.ids,
		SpoofUserAgent: rt.SpoofUserAgent, Intercept: rt.Intercept,
	}
}

func targetConfigOf(cfg *config.Config, name string) config.TargetConfig {
	for _, tc := range cfg.Targets {
		if tc.Name == name {
			return tc
		}
	}
	return config.TargetConfig{}
}

// newRuntime creates the pool (seeding the backend) and identity store of
// a target that has none yet.
func (a *Agent) newRuntime(ctx context.Context, rt config.ResolvedTarget) (*targetRT, error) {
	r := &targetRT{name: rt.Name, res: rt}
	ids, err := identityStore(rt, a.mx.identityRotated(rt.Name))
	if err != nil {
		return nil, err
	}
	r.ids = ids
	addrs, ups := upstreamsOf(rt)
	r.hooks.Store(a.generationHooks(rt.Name, ids, ups))
	r.pool, err = pool.New(ctx, rt.Name, addrs, a.backend, rt.Pool, pool.Options{Clock: a.opts.Clock, Logger: a.log, Hooks: r.poolHooks()})
	if err != nil {
		return nil, fmt.Errorf("build pool for target %s: %w", rt.Name, err)
	}
	r.target = r.proxyTarget(rt, ups)
	if len(addrs) == 0 {
		a.log.Warn("target has no IPs: its requests wait up to maxQueueWait, then get 503", "target", rt.Name)
	}
	return r, nil
}

// buildTargets creates the runtime of every target at startup.
func (a *Agent) buildTargets(ctx context.Context, cfg *config.Config, resolved []config.ResolvedTarget) ([]*proxy.Target, error) {
	st := &a.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	st.cfg = cfg
	st.rts = make(map[string]*targetRT, len(resolved))
	targets := make([]*proxy.Target, 0, len(resolved))
	for _, rt := range resolved {
		r, err := a.newRuntime(ctx, rt)
		if err != nil {
			return nil, err
		}
		r.tc = targetConfigOf(cfg, rt.Name)
		st.rts[rt.Name] = r
		targets = append(targets, r.target)
	}
	return targets, nil
}

// sameTLS reports whether two origin TLS configs built from a target's
// config verify the same way.
func sameTLS(a, b *tls.Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.InsecureSkipVerify != b.InsecureSkipVerify || (a.RootCAs == nil) != (b.RootCAs == nil) {
		return false
	}
	return a.RootCAs == nil || a.RootCAs.Equal(b.RootCAs)
}

// ReloadFile reloads the config file the agent was started from
// (Options.ConfigPath, with Options.Overrides); see Reload.
func (a *Agent) ReloadFile(ctx context.Context) (ReloadResult, error) {
	path := a.opts.ConfigPath
	if path == "" {
		return ReloadResult{}, errors.New("reload: the agent was not started from a config file")
	}
	if h, err := hashFile(ctx, path); err == nil {
		a.reload.mu.Lock()
		a.reload.fileHash = h
		a.reload.mu.Unlock()
	}
	res, err := config.LoadResolved(ctx, path, a.opts.Overrides)
	if err != nil {
		err = fmt.Errorf("config error: %w", err)
		a.reloadDone(nil, err)
		return ReloadResult{}, err
	}
	for _, w := range res.Warnings() {
		a.log.Warn("config: " + w)
	}
	return a.Reload(ctx, res)
}

// Reload applies res to the running agent, or rejects it in full and
// keeps the running config. See the top of this file for what applies and
// what waits for a restart.
// The file seeds the runtime store first (see runtime.go); what the store
// then holds is applied.
func (a *Agent) Reload(ctx context.Context, res *config.Resolved) (ReloadResult, error) {
	st := &a.reload
	st.mu.Lock()
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	d, cfg, targets, err := a.seedStore(sctx, res.Config)
	cancel()
	var out ReloadResult
	if err == nil {
		out, err = a.applyResolved(ctx, cfg, targets)
	}
	if err == nil {
		st.cfg, st.file, st.doc, st.applied, st.needSeed = cfg, res.Config, d, d.ID(), false
	}
	out.RestartRequired = config.RestartKeys(a.cfg, res.Config)
	st.mu.Unlock()
	a.reloadDone(&out, err)
	return out, err
}

// reloadDone logs and counts the end of one reload.
func (a *Agent) reloadDone(res *ReloadResult, err error) {
	a.mx.configReload(err == nil)
	if err != nil {
		a.log.Error("config reload rejected; the running config stays", "reason", err.Error())
		return
	}
	if len(res.RestartRequired) > 0 {
		a.log.Warn("config reload: these settings changed but only take effect after a restart; their running values stay",
			"keys", strings.Join(res.RestartRequired, ","))
	}
	a.log.Info("config reloaded",
		"targets_added", strings.Join(res.Added, ","), "targets_removed", strings.Join(res.Removed, ","),
		"targets_changed", strings.Join(res.Changed, ","), "ips_added", res.IPsAdded, "ips_removed", res.IPsRemoved)
}

// editIPs changes one target's IP list at run time (the admin API): the
// edit goes to the runtime store (so every agent on it serves it, and it
// outlives reloads and restarts) and applies here by the reload path:
// added IPs take traffic at once, removed ones drain, the prober and
// transparent mode follow.
func (a *Agent) editIPs(ctx context.Context, target string, edit func([]config.ResolvedIP) ([]config.ResolvedIP, error)) error {
	return a.changeRuntime(ctx, func(d *store.Doc, targets []config.ResolvedTarget) error {
		i := slices.IndexFunc(targets, func(t config.ResolvedTarget) bool { return t.Name == target })
		if i < 0 {
			return errUnknownTarget
		}
		before := targets[i].IPs
		after, err := edit(slices.Clone(before))
		if err != nil {
			return err
		}
		if d.IPEdits == nil {
			d.IPEdits = map[string]*store.IPEdit{}
		}
		e := d.IPEdits[target]
		if e == nil {
			e = &store.IPEdit{}
			d.IPEdits[target] = e
		}
		has := func(ips []config.ResolvedIP, addr string) bool {
			return slices.ContainsFunc(ips, func(ip config.ResolvedIP) bool { return ip.Addr() == addr })
		}
		// An addition undoes a removal of that IP, and the reverse, so
		// that reverting an edit leaves none stored.
		toggle := func(undo, do *[]string, addr string) {
			if slices.Contains(*undo, addr) {
				*undo = slices.DeleteFunc(*undo, func(s string) bool { return s == addr })
			} else if !slices.Contains(*do, addr) {
				*do = append(*do, addr)
			}
		}
		for _, ip := range after {
			if addr := ip.Addr(); !has(before, addr) {
				toggle(&e.Removed, &e.Added, addr)
			}
		}
		for _, ip := range before {
			if addr := ip.Addr(); !has(after, addr) {
				toggle(&e.Added, &e.Removed, addr)
			}
		}
		if len(e.Added) == 0 && len(e.Removed) == 0 {
			delete(d.IPEdits, target)
		}
		return nil
	})
}

var errUnknownTarget = errors.New("unknown target")

// planned is one target of the new config on its way in.
type planned struct {
	rt      config.ResolvedTarget
	tc      config.TargetConfig
	addrs   []string
	ups     map[string]proxy.Upstream
	prev    *targetRT       // nil: added
	r       *targetRT       // the runtime it ends up with
	newIDs  *identity.Store // a store created for it (identity turned on)
	updated bool            // its pool was updated (to undo on failure)
}

// reloadPlan is one reload on its way: the plan, then what applying it
// changed, so that a failure can put everything back.
type reloadPlan struct {
	cfg        *config.Config
	targets    []*planned
	created    []*targetRT     // runtimes of added targets
	kept       []keptState     // kept targets as they were
	oldTargets []*proxy.Target // the generation before
	published  []*proxy.Target // the new generation
}

// keptState is a kept target's swappable state before the reload.
type keptState struct {
	r     *targetRT
	hooks *pool.Hooks
	idCfg identity.Config
}

// applyResolved applies resolved targets (their settings from cfg) to the
// running agent, or leaves it as it was; the caller holds a.reload.mu.
// The steps: plan (nothing running is touched), apply (added targets'
// pools, the new generation published, kept targets' pools updated),
// roll back on a failure, else commit.
func (a *Agent) applyResolved(ctx context.Context, cfg *config.Config, resolved []config.ResolvedTarget) (ReloadResult, error) {
	rp, err := a.planReload(cfg, resolved)
	if err != nil {
		return ReloadResult{}, err
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reloadTimeout)
	defer cancel()
	if err := a.applyPlan(actx, rp); err != nil {
		a.rollBack(actx, rp)
		return ReloadResult{}, err
	}
	return a.commit(actx, rp), nil
}

// planReload checks every target of the new config against its running
// runtime and prepares what it needs; nothing running is touched.
func (a *Agent) planReload(cfg *config.Config, resolved []config.ResolvedTarget) (*reloadPlan, error) {
	st := &a.reload
	rp := &reloadPlan{cfg: cfg, targets: make([]*planned, 0, len(resolved))}
	for _, rt := range resolved {
		p := &planned{rt: rt, tc: targetConfigOf(cfg, rt.Name), prev: st.rts[rt.Name]}
		p.addrs, p.ups = upstreamsOf(rt)
		if p.prev != nil {
			if sameTLS(p.prev.res.TLS, rt.TLS) {
				p.rt.TLS = p.prev.res.TLS // keeps the target's upstream connections
			}
			if rt.Identity.Enabled && p.prev.ids != nil {
				if err := rt.Identity.Validate(); err != nil {
					return nil, fmt.Errorf("config error: targets %s: identity: %w", rt.Name, err)
				}
			} else if rt.Identity.Enabled {
				var err error
				if p.newIDs, err = identityStore(rt, a.mx.identityRotated(rt.Name)); err != nil {
					return nil, fmt.Errorf("config error: %w", err)
				}
			}
		}
		rp.targets = append(rp.targets, p)
	}
	return rp, nil
}

// applyPlan gives added targets their pool (seeding only their own name),
// publishes the new generation at once (kept targets swap identity policy
// and hooks with it), then updates kept targets' pools with the new IPs
// and policy. On an error the caller rolls back.
func (a *Agent) applyPlan(ctx context.Context, rp *reloadPlan) error {
	for _, p := range rp.targets {
		if p.prev != nil {
			continue
		}
		r, err := a.newRuntime(ctx, p.rt)
		if err != nil {
			return fmt.Errorf("add target %s: %w", p.rt.Name, err)
		}
		r.tc = p.tc
		p.r = r
		rp.created = append(rp.created, r)
	}

	rp.oldTargets = a.Targets()
	targets := make([]*proxy.Target, 0, len(rp.targets))
	for _, p := range rp.targets {
		if p.prev == nil {
			targets = append(targets, p.r.target)
			continue
		}
		r := p.prev
		k := keptState{r: r, hooks: r.hooks.Load()}
		if r.ids != nil {
			k.idCfg = r.ids.Config()
		}
		rp.kept = append(rp.kept, k)
		p.r = r
		ids := r.ids
		switch {
		case !p.rt.Identity.Enabled:
			ids = nil
		case p.newIDs != nil:
			ids = p.newIDs
		default:
			_ = ids.Update(p.rt.Identity) // validated by planReload
		}
		r.hooks.Store(a.generationHooks(r.name, ids, p.ups))
		gen := r.proxyTarget(p.rt, p.ups)
		gen.Identity = ids
		targets = append(targets, gen)
	}
	rp.published = targets
	a.srv.SetTargets(targets)
	a.live.Store(&targets)

	// A backend failure (Redis unreachable) puts everything back.
	for _, p := range rp.targets {
		if p.prev == nil {
			continue
		}
		if err := p.prev.pool.Update(ctx, p.addrs, p.rt.Pool); err != nil {
			return fmt.Errorf("update target %s: %w", p.rt.Name, err)
		}
		p.updated = true
	}
	return nil
}

// rollBack puts back what applyPlan changed: kept targets' pools, hooks
// and identity policy, the old generation, and closes added targets' pools.
func (a *Agent) rollBack(ctx context.Context, rp *reloadPlan) {
	for _, p := range rp.targets {
		if p.updated {
			if uerr := p.prev.pool.Update(ctx, p.prev.addrs(), p.prev.res.Pool); uerr != nil {
				a.log.Error("reload: put the pool of a target back", "target", p.rt.Name, "err", uerr)
			}
		}
	}
	for _, k := range rp.kept {
		k.r.hooks.Store(k.hooks)
		if k.r.ids != nil {
			_ = k.r.ids.Update(k.idCfg)
		}
	}
	if rp.published != nil {
		old := rp.oldTargets
		a.srv.SetTargets(old)
		a.live.Store(&old)
	}
	for _, r := range rp.created {
		r.pool.Close()
	}
}

// commit makes the applied plan the running state: runtimes take their
// new generation, removed targets' pools close, and transparent modes and
// the prober follow the new IPs.
func (a *Agent) commit(ctx context.Context, rp *reloadPlan) ReloadResult {
	st := &a.reload
	var res ReloadResult
	next := make(map[string]*targetRT, len(rp.targets))
	for i, p := range rp.targets {
		r := p.r
		next[r.name] = r
		if p.prev == nil {
			res.Added = append(res.Added, r.name)
			res.IPsAdded += len(p.addrs)
			continue
		}
		added, removed := diffAddrs(r.res, p.rt)
		res.IPsAdded += len(added)
		res.IPsRemoved += len(removed)
		if r.ids != nil {
			for _, addr := range removed {
				r.ids.Forget(addr)
			}
		}
		if targetChanged(r, p) {
			res.Changed = append(res.Changed, r.name)
		}
		r.ids = rp.published[i].Identity
		r.res, r.tc, r.target = p.rt, p.tc, rp.published[i]
	}
	for name, r := range st.rts {
		if _, ok := next[name]; ok {
			continue
		}
		res.Removed = append(res.Removed, name)
		res.IPsRemoved += len(r.res.IPs)
		r.pool.Close() // its queued and in-flight requests still end through the backend
	}
	slices.Sort(res.Removed)
	st.rts = next
	if res.IPsAdded+res.IPsRemoved > 0 {
		a.refreshTransparentUpstreams(ctx)
		a.refreshGatewayUpstreams(ctx)
	}
	if a.prober != nil {
		a.prober.SetTargets(a.proberTargets()) // from its next round on
	}
	for _, p := range rp.targets {
		if len(p.addrs) == 0 && (p.prev == nil || len(p.prev.res.IPs) > 0) {
			a.log.Warn("target has no IPs now: its requests wait up to maxQueueWait, then get 503", "target", p.rt.Name)
		}
	}
	return res
}

func (r *targetRT) addrs() []string {
	addrs, _ := upstreamsOf(r.res)
	return addrs
}

// diffAddrs lists the pool addresses added and removed between two
// generations of a target.
func diffAddrs(old, cur config.ResolvedTarget) (added, removed []string) {
	was := map[string]bool{}
	for _, ip := range old.IPs {
		was[ip.Addr()] = true
	}
	is := map[string]bool{}
	for _, ip := range cur.IPs {
		a := ip.Addr()
		is[a] = true
		if !was[a] {
			added = append(added, a)
		}
	}
	for _, ip := range old.IPs {
		if !is[ip.Addr()] {
			removed = append(removed, ip.Addr())
		}
	}
	return added, removed
}

func targetChanged(r *targetRT, p *planned) bool {
	return !reflect.DeepEqual(r.tc, p.tc) || !slices.Equal(r.res.IPs, p.rt.IPs) || r.res.TLS != p.rt.TLS
}
