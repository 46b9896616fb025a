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
// sections) are compared with the running values; each one that differs is
// named in one WARN and keeps its running value, and the rest applies. A
// config that does not load or validate is rejected in full with the
// message `validate` prints, and the running config stays.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// watchDebounce is how long the config watcher waits after the last change
// in the file's directory before it reads the file: editors write a file in
// several steps (truncate and write, or write a temporary file and rename).
const watchDebounce = 250 * time.Millisecond

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
	res    ResolvedTarget // as applied
	tc     TargetConfig   // as applied
	target *proxy.Target  // the current generation
}

// reloadState is the agent's reload side; mu serialises reloads.
type reloadState struct {
	mu       sync.Mutex
	cfg      *Config // the config in force (targets as the file says; admin IP edits aside)
	rts      map[string]*targetRT
	fileHash [sha256.Size]byte // of the config file last loaded by ReloadFile or the watcher start
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
func upstreamsOf(rt ResolvedTarget) ([]string, map[string]proxy.Upstream) {
	addrs := make([]string, 0, len(rt.IPs))
	ups := make(map[string]proxy.Upstream, len(rt.IPs))
	for _, ip := range rt.IPs {
		addr := ip.Addr()
		addrs = append(addrs, addr)
		ups[addr] = proxy.Upstream{Addr: addr, Username: ip.Username, Password: ip.Password, Provider: ip.Provider, Region: ip.Region}
	}
	return addrs, ups
}

func (r *targetRT) proxyTarget(rt ResolvedTarget, ups map[string]proxy.Upstream) *proxy.Target {
	return &proxy.Target{
		Name: rt.Name, Regex: rt.Regex, Pool: r.pool, Upstreams: ups, NumRetries: rt.NumRetries, MaxClientRetries: rt.MaxClientRetries, TLS: rt.TLS, Identity: r.ids,
	}
}

func targetConfigOf(cfg *Config, name string) TargetConfig {
	for _, tc := range cfg.Targets {
		if tc.Name == name {
			return tc
		}
	}
	return TargetConfig{}
}

// newRuntime creates the pool (seeding the backend) and identity store of
// a target that has none yet.
func (a *Agent) newRuntime(ctx context.Context, cfg *Config, rt ResolvedTarget) (*targetRT, error) {
	r := &targetRT{name: rt.Name, res: rt, tc: targetConfigOf(cfg, rt.Name)}
	ids, err := cfg.identityStore(rt.Name, a.mx.identityRotated(rt.Name))
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
func (a *Agent) buildTargets(ctx context.Context, cfg *Config, resolved []ResolvedTarget) ([]*proxy.Target, error) {
	st := &a.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	st.cfg = cfg
	st.rts = make(map[string]*targetRT, len(resolved))
	targets := make([]*proxy.Target, 0, len(resolved))
	for _, rt := range resolved {
		r, err := a.newRuntime(ctx, cfg, rt)
		if err != nil {
			return nil, err
		}
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
	cfg, err := LoadContext(ctx, path, a.opts.Overrides)
	if err != nil {
		err = fmt.Errorf("config error: %w", err)
		a.reloadDone(nil, err)
		return ReloadResult{}, err
	}
	return a.Reload(ctx, cfg)
}

// Reload applies cfg to the running agent, or rejects it in full (with the
// message `validate` prints) and keeps the running config. See the top of
// this file for what applies and what waits for a restart.
func (a *Agent) Reload(ctx context.Context, cfg *Config) (ReloadResult, error) {
	st := &a.reload
	st.mu.Lock()
	res, err := a.apply(ctx, cfg)
	st.mu.Unlock()
	a.reloadDone(&res, err)
	return res, err
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

// planned is one target of the new config on its way in.
type planned struct {
	rt      ResolvedTarget
	tc      TargetConfig
	addrs   []string
	ups     map[string]proxy.Upstream
	prev    *targetRT // nil: added
	r       *targetRT // the runtime it ends up with
	idCfg   identity.Config
	idOn    bool
	newIDs  *identity.Store // a store created for it (identity turned on)
	updated bool            // its pool was updated (to undo on failure)
}

func (a *Agent) apply(ctx context.Context, cfg *Config) (ReloadResult, error) {
	resolved, err := cfg.Resolve()
	if err != nil {
		return ReloadResult{}, fmt.Errorf("config error: %w", err)
	}
	res, err := a.applyResolved(ctx, cfg, resolved)
	if err == nil {
		a.reload.cfg = cfg
	}
	res.RestartRequired = restartKeys(a.cfg, cfg)
	return res, err
}

// editIPs changes one target's IP list at run time (the admin API) by the
// same path as a reload of the config in force with that list changed:
// added IPs take traffic at once, removed ones drain, the prober and
// transparent mode follow. It lasts until the next reload or restart,
// which read the file again.
func (a *Agent) editIPs(ctx context.Context, target string, edit func([]ResolvedIP) ([]ResolvedIP, error)) (ReloadResult, error) {
	st := &a.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	var resolved []ResolvedTarget
	found := false
	for _, t := range a.Targets() {
		r := st.rts[t.Name]
		if r == nil {
			continue
		}
		rt := r.res
		if t.Name == target {
			ips, err := edit(slices.Clone(rt.IPs))
			if err != nil {
				return ReloadResult{}, err
			}
			rt.IPs, found = ips, true
		}
		resolved = append(resolved, rt)
	}
	if !found {
		return ReloadResult{}, errUnknownTarget
	}
	return a.applyResolved(ctx, st.cfg, resolved)
}

var errUnknownTarget = errors.New("unknown target")

// applyResolved applies resolved targets (their settings from cfg) to the
// running agent, or leaves it as it was; the caller holds a.reload.mu.
func (a *Agent) applyResolved(ctx context.Context, cfg *Config, resolved []ResolvedTarget) (ReloadResult, error) {
	st := &a.reload
	var res ReloadResult
	var err error

	// Plan: nothing running is touched yet.
	plan := make([]*planned, 0, len(resolved))
	for _, rt := range resolved {
		p := &planned{rt: rt, tc: targetConfigOf(cfg, rt.Name), prev: st.rts[rt.Name]}
		p.addrs, p.ups = upstreamsOf(rt)
		p.idCfg, p.idOn = cfg.identityConfig(rt.Name)
		if p.prev != nil {
			if sameTLS(p.prev.res.TLS, rt.TLS) {
				p.rt.TLS = p.prev.res.TLS // keeps the target's upstream connections
			}
			if p.idOn && p.prev.ids != nil {
				if err := p.idCfg.Validate(); err != nil {
					return res, fmt.Errorf("config error: targets %s: identity: %w", rt.Name, err)
				}
			} else if p.idOn {
				if p.newIDs, err = cfg.identityStore(rt.Name, a.mx.identityRotated(rt.Name)); err != nil {
					return res, fmt.Errorf("config error: %w", err)
				}
			}
		}
		plan = append(plan, p)
	}

	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reloadTimeout)
	defer cancel()

	// Added targets get their pool (seeding only their own name).
	var created []*targetRT
	undoCreated := func() {
		for _, r := range created {
			r.pool.Close()
		}
	}
	for _, p := range plan {
		if p.prev != nil {
			continue
		}
		if p.r, err = a.newRuntime(actx, cfg, p.rt); err != nil {
			undoCreated()
			return res, fmt.Errorf("add target %s: %w", p.rt.Name, err)
		}
		created = append(created, p.r)
	}

	// The new generation, published at once. Kept targets swap identity
	// policy and hooks with it.
	oldTargets := a.Targets()
	targets := make([]*proxy.Target, 0, len(plan))
	type undoKept struct {
		r     *targetRT
		hooks *pool.Hooks
		idCfg identity.Config
	}
	var undo []undoKept
	for _, p := range plan {
		if p.prev == nil {
			targets = append(targets, p.r.target)
			continue
		}
		r := p.prev
		u := undoKept{r: r, hooks: r.hooks.Load()}
		if r.ids != nil {
			u.idCfg = r.ids.Config()
		}
		undo = append(undo, u)
		p.r = r
		ids := r.ids
		switch {
		case !p.idOn:
			ids = nil
		case p.newIDs != nil:
			ids = p.newIDs
		default:
			_ = ids.Update(p.idCfg) // validated above
		}
		r.hooks.Store(a.generationHooks(r.name, ids, p.ups))
		gen := r.proxyTarget(p.rt, p.ups)
		gen.Identity = ids
		targets = append(targets, gen)
	}
	a.srv.SetTargets(targets)
	a.live.Store(&targets)

	// Kept targets' pools take the new IPs and policy. A backend failure
	// (Redis unreachable) puts everything back as it was.
	for _, p := range plan {
		if p.prev == nil {
			continue
		}
		if err = p.prev.pool.Update(actx, p.addrs, p.rt.Pool); err != nil {
			err = fmt.Errorf("update target %s: %w", p.rt.Name, err)
			break
		}
		p.updated = true
	}
	if err != nil {
		for _, p := range plan {
			if p.updated {
				if uerr := p.prev.pool.Update(actx, p.prev.addrs(), p.prev.res.Pool); uerr != nil {
					a.log.Error("reload: put the pool of a target back", "target", p.rt.Name, "err", uerr)
				}
			}
		}
		for _, u := range undo {
			u.r.hooks.Store(u.hooks)
			if u.r.ids != nil {
				_ = u.r.ids.Update(u.idCfg)
			}
		}
		a.srv.SetTargets(oldTargets)
		a.live.Store(&oldTargets)
		undoCreated()
		return res, err
	}

	// Commit.
	next := make(map[string]*targetRT, len(plan))
	for i, p := range plan {
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
		r.ids = targets[i].Identity
		r.res, r.tc, r.target = p.rt, p.tc, targets[i]
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
		a.refreshTransparentUpstreams(actx)
		a.refreshGatewayUpstreams(actx)
	}
	if a.prober != nil {
		a.prober.SetTargets(a.proberTargets()) // from its next round on
	}
	for _, p := range plan {
		if len(p.addrs) == 0 && (p.prev == nil || len(p.prev.res.IPs) > 0) {
			a.log.Warn("target has no IPs now: its requests wait up to maxQueueWait, then get 503", "target", p.rt.Name)
		}
	}
	return res, nil
}

func (r *targetRT) addrs() []string {
	addrs, _ := upstreamsOf(r.res)
	return addrs
}

// diffAddrs lists the pool addresses added and removed between two
// generations of a target.
func diffAddrs(old, cur ResolvedTarget) (added, removed []string) {
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

// restartKeys names the keys of the sections that only take effect at
// startup (server, auth, transparent) whose value in next differs from the
// running one.
func restartKeys(running, next *Config) []string {
	var out []string
	for _, sec := range []struct {
		key  string
		a, b any
	}{
		{"server", running.Server, next.Server},
		{"auth", running.Auth, next.Auth},
		{"transparent", running.Transparent, next.Transparent},
	} {
		diffKeys(sec.key, reflect.ValueOf(sec.a), reflect.ValueOf(sec.b), &out)
	}
	return out
}

func diffKeys(key string, a, b reflect.Value, out *[]string) {
	if a.Kind() != reflect.Struct {
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, key)
		}
		return
	}
	for i := range a.NumField() {
		f := a.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if name == "" {
			name = f.Name
		}
		diffKeys(key+"."+name, a.Field(i), b.Field(i), out)
	}
}

func hashFile(ctx context.Context, path string) ([sha256.Size]byte, error) {
	data, err := readFileLimited(ctx, path, MaxConfigBytes)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(data), nil
}

// startReloads makes Run reload the config file on SIGHUP and, with
// server.watchConfig, when the file changes. stop ends both.
func (a *Agent) startReloads(ctx context.Context) (stop func()) {
	path := a.opts.ConfigPath
	if path == "" {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.log.Info("SIGHUP: reloading the config", "path", path)
				_, _ = a.ReloadFile(ctx)
			}
		}
	})
	if a.cfg.Server.WatchConfig {
		w, err := a.newConfigWatcher(path)
		if err != nil {
			a.log.Error("cannot watch the config file; SIGHUP still reloads it", "path", path, "err", err)
		} else {
			a.log.Info("watching the config file", "path", path)
			wg.Go(func() { w.run(ctx) })
		}
	}
	return func() {
		signal.Stop(hup)
		cancel()
		wg.Wait()
	}
}

// configWatcher reloads the config when its file changes. It watches the
// file's directory, so that a file replaced by rename (editors, `mv`,
// Kubernetes ConfigMap symlink swaps) is seen like one written in place;
// after watchDebounce without further events it reads the file and
// reloads when the content differs from the last one loaded.
type configWatcher struct {
	a    *Agent
	path string
	w    *fsnotify.Watcher
}

func (a *Agent) newConfigWatcher(path string) (*configWatcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(abs), err)
	}
	if h, err := hashFile(context.Background(), abs); err == nil {
		a.reload.mu.Lock()
		a.reload.fileHash = h
		a.reload.mu.Unlock()
	}
	return &configWatcher{a: a, path: abs, w: w}, nil
}

func (cw *configWatcher) run(ctx context.Context) {
	defer cw.w.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-cw.w.Events:
			if !ok {
				return
			}
			timer.Reset(watchDebounce)
		case err, ok := <-cw.w.Errors:
			if !ok {
				return
			}
			cw.a.log.Warn("config watcher", "path", cw.path, "err", err)
		case <-timer.C:
			h, err := hashFile(ctx, cw.path)
			if err != nil {
				continue // mid-replace: the next event brings it back
			}
			st := &cw.a.reload
			st.mu.Lock()
			same := h == st.fileHash
			st.mu.Unlock()
			if same {
				continue
			}
			cw.a.log.Info("config file changed: reloading", "path", cw.path)
			_, _ = cw.a.ReloadFile(ctx)
		}
	}
}
