package agent

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/store"
)

// repository is the runtime configuration as the admin GraphQL API reads
// and changes it (admin.Repository), with proxy-hopper's rules: names are
// unique; a static entity (the file's) cannot be updated or removed, an
// immutable one not updated; a target's pool must exist; a provider keeps
// at least one IP. Every change goes through changeRuntime, so it is
// checked as a whole as `validate` would, stored for the fleet, and in
// force here when the call returns.
type repository struct{ a *Agent }

var _ admin.Repository = repository{}

// inForce returns the config and targets in force.
func (r repository) inForce() (*config.Config, map[string][]config.ResolvedIP) {
	st := &r.a.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	ips := make(map[string][]config.ResolvedIP, len(st.rts))
	for name, rt := range st.rts {
		ips[name] = slices.Clone(rt.res.IPs)
	}
	return st.cfg, ips
}

func flag(b *bool) bool { return b == nil || *b }

func repoTarget(tc config.TargetConfig, ips []config.ResolvedIP) admin.RepoTarget {
	t := admin.RepoTarget{
		Name: tc.Name, Regex: tc.Regex, PoolName: tc.IPPool,
		MinRequestInterval: tc.MinRequestInterval.D().Seconds(), MaxQueueWait: tc.MaxQueueWait.D().Seconds(),
		NumRetries: tc.NumRetries, IPFailuresUntilQuarantine: tc.IPFailuresUntilQuarantine,
		QuarantineTime: tc.QuarantineTime.D().Seconds(), DefaultProxyPort: tc.DefaultProxyPort,
		SpoofUserAgent: flag(tc.SpoofUserAgent), Mutable: flag(tc.Mutable), Stat: flag(tc.Static),
		ResolvedIPs: []admin.RepoIP{},
	}
	for _, ip := range ips {
		t.ResolvedIPs = append(t.ResolvedIPs, admin.RepoIP{Host: ip.Host, Port: ip.Port, Provider: ip.Provider})
	}
	return t
}

func repoPool(pc config.IPPoolConfig) admin.RepoPool {
	p := admin.RepoPool{Name: pc.Name, Mutable: flag(pc.Mutable), Stat: flag(pc.Static), IPRequests: []admin.RepoIPRequest{}}
	for _, q := range pc.IPRequests {
		p.IPRequests = append(p.IPRequests, admin.RepoIPRequest{Provider: q.Provider, Count: q.Count})
	}
	return p
}

func repoProvider(pc config.ProviderConfig) admin.RepoProvider {
	return admin.RepoProvider{Name: pc.Name, IPList: append([]string{}, pc.IPList...), RegionTag: pc.RegionTag,
		Mutable: flag(pc.Mutable), Stat: flag(pc.Static), HasAuth: pc.Auth != nil}
}

// Targets implements admin.Repository.
func (r repository) Targets(ctx context.Context) ([]admin.RepoTarget, error) {
	cfg, ips := r.inForce()
	out := make([]admin.RepoTarget, 0, len(cfg.Targets))
	for _, tc := range cfg.Targets {
		out = append(out, repoTarget(tc, ips[tc.Name]))
	}
	return out, nil
}

// Pools implements admin.Repository.
func (r repository) Pools(ctx context.Context) ([]admin.RepoPool, error) {
	cfg, _ := r.inForce()
	out := make([]admin.RepoPool, 0, len(cfg.IPPools))
	for _, pc := range cfg.IPPools {
		out = append(out, repoPool(pc))
	}
	return out, nil
}

// Providers implements admin.Repository.
func (r repository) Providers(ctx context.Context) ([]admin.RepoProvider, error) {
	cfg, _ := r.inForce()
	out := make([]admin.RepoProvider, 0, len(cfg.ProxyProviders))
	for _, pc := range cfg.ProxyProviders {
		out = append(out, repoProvider(pc))
	}
	return out, nil
}

// kinds name the entity sections in proxy-hopper's messages.
const (
	kindTarget   = "Target"
	kindPool     = "Pool"
	kindProvider = "Provider"
)

func section(d *store.Doc, kind string) *[]store.Entity {
	switch kind {
	case kindTarget:
		return &d.Targets
	case kindPool:
		return &d.Pools
	}
	return &d.Providers
}

func find(list []store.Entity, name string) int {
	return slices.IndexFunc(list, func(e store.Entity) bool { return store.Name(e) == name })
}

// add appends e, refusing a name in use.
func add(d *store.Doc, kind string, e store.Entity) error {
	l := section(d, kind)
	if find(*l, store.Name(e)) >= 0 {
		return fmt.Errorf("%s '%s' already exists in the repository. Use update_%s to modify it.", kind, store.Name(e), strings.ToLower(kind))
	}
	*l = append(*l, e)
	return nil
}

// update replaces the entity of e's name, in place, refusing a static or
// immutable one.
func update(d *store.Doc, kind string, e store.Entity) error {
	l := section(d, kind)
	i := find(*l, store.Name(e))
	if i < 0 {
		return fmt.Errorf("%s '%s' not found in the repository.", kind, store.Name(e))
	}
	if err := changeable(kind, (*l)[i], "updated"); err != nil {
		return err
	}
	if v, ok := (*l)[i]["mutable"].(bool); ok && !v {
		return fmt.Errorf("%s '%s' is not mutable. Set mutable: true in its configuration to allow runtime updates.", kind, store.Name(e))
	}
	(*l)[i] = e
	return nil
}

// remove deletes the entity called name (none: nothing to do, as
// proxy-hopper), refusing a static one.
func remove(d *store.Doc, kind, name string) error {
	l := section(d, kind)
	i := find(*l, name)
	if i < 0 {
		return nil
	}
	if err := changeable(kind, (*l)[i], "removed"); err != nil {
		return err
	}
	*l = slices.Delete(*l, i, i+1)
	return nil
}

func changeable(kind string, e store.Entity, verb string) error {
	if isStatic(e) {
		return fmt.Errorf("%s '%s' is config-static and cannot be %s via the API. Change it in the YAML configuration file instead (or give it static: false there).", kind, store.Name(e), verb)
	}
	return nil
}

func targetEntity(in admin.TargetInput) store.Entity {
	return store.Entity{
		"name": in.Name, "regex": in.Regex, "ipPool": in.PoolName,
		"minRequestInterval": in.MinRequestInterval, "maxQueueWait": in.MaxQueueWait,
		"numRetries": float64(in.NumRetries), "ipFailuresUntilQuarantine": float64(in.IPFailuresUntilQuarantine),
		"quarantineTime": in.QuarantineTime, "defaultProxyPort": float64(in.DefaultProxyPort),
		"spoofUserAgent": in.SpoofUserAgent, "mutable": in.Mutable, "static": in.Static,
	}
}

func poolEntity(in admin.PoolInput) store.Entity {
	reqs := make([]any, len(in.IPRequests))
	for i, q := range in.IPRequests {
		reqs[i] = map[string]any{"provider": q.Provider, "count": float64(q.Count)}
	}
	return store.Entity{"name": in.Name, "ipRequests": reqs, "mutable": in.Mutable, "static": in.Static}
}

func providerEntity(in admin.ProviderInput) store.Entity {
	ips := make([]any, len(in.IPList))
	for i, s := range in.IPList {
		ips[i] = s
	}
	e := store.Entity{"name": in.Name, "ipList": ips, "mutable": in.Mutable, "static": in.Static}
	if in.RegionTag != nil {
		e["regionTag"] = *in.RegionTag
	}
	if in.Auth != nil {
		e["auth"] = map[string]any{"username": in.Auth.Username, "password": in.Auth.Password}
	}
	return e
}

// change runs fn on the store and returns what the named entity is then.
func (r repository) change(ctx context.Context, fn func(d *store.Doc) error) error {
	return r.a.changeRuntime(ctx, func(d *store.Doc, _ []config.ResolvedTarget) error { return fn(d) })
}

// byName returns the entity called name of list, or the error
// proxy-hopper gives when kind has none of that name.
func byName[T any](list []T, nameOf func(T) string, kind, name string) (T, error) {
	for _, e := range list {
		if nameOf(e) == name {
			return e, nil
		}
	}
	var zero T
	return zero, fmt.Errorf("%s '%s' not found in the repository.", kind, name)
}

func (r repository) target(ctx context.Context, name string) (admin.RepoTarget, error) {
	ts, _ := r.Targets(ctx)
	return byName(ts, func(t admin.RepoTarget) string { return t.Name }, kindTarget, name)
}

func (r repository) pool(ctx context.Context, name string) (admin.RepoPool, error) {
	ps, _ := r.Pools(ctx)
	return byName(ps, func(p admin.RepoPool) string { return p.Name }, kindPool, name)
}

func (r repository) provider(ctx context.Context, name string) (admin.RepoProvider, error) {
	ps, _ := r.Providers(ctx)
	return byName(ps, func(p admin.RepoProvider) string { return p.Name }, kindProvider, name)
}

// checkPool refuses a target whose pool is not in d.
func checkPool(d *store.Doc, pool string) error {
	if find(d.Pools, pool) < 0 {
		return fmt.Errorf("Pool '%s' not found in the repository.", pool)
	}
	return nil
}

// AddTarget implements admin.Repository.
func (r repository) AddTarget(ctx context.Context, in admin.TargetInput) (admin.RepoTarget, error) {
	err := r.change(ctx, func(d *store.Doc) error {
		if err := checkPool(d, in.PoolName); err != nil {
			return err
		}
		return add(d, kindTarget, targetEntity(in))
	})
	if err != nil {
		return admin.RepoTarget{}, err
	}
	return r.target(ctx, in.Name)
}

// UpdateTarget implements admin.Repository.
func (r repository) UpdateTarget(ctx context.Context, in admin.TargetInput) (admin.RepoTarget, error) {
	err := r.change(ctx, func(d *store.Doc) error {
		if err := checkPool(d, in.PoolName); err != nil {
			return err
		}
		return update(d, kindTarget, targetEntity(in))
	})
	if err != nil {
		return admin.RepoTarget{}, err
	}
	return r.target(ctx, in.Name)
}

// RemoveTarget implements admin.Repository.
func (r repository) RemoveTarget(ctx context.Context, name string) error {
	return r.change(ctx, func(d *store.Doc) error { return remove(d, kindTarget, name) })
}

// AddPool implements admin.Repository.
func (r repository) AddPool(ctx context.Context, in admin.PoolInput) (admin.RepoPool, error) {
	if err := r.change(ctx, func(d *store.Doc) error { return add(d, kindPool, poolEntity(in)) }); err != nil {
		return admin.RepoPool{}, err
	}
	return r.pool(ctx, in.Name)
}

// UpdatePool implements admin.Repository.
func (r repository) UpdatePool(ctx context.Context, in admin.PoolInput) (admin.RepoPool, error) {
	if err := r.change(ctx, func(d *store.Doc) error { return update(d, kindPool, poolEntity(in)) }); err != nil {
		return admin.RepoPool{}, err
	}
	return r.pool(ctx, in.Name)
}

// RemovePool implements admin.Repository.
func (r repository) RemovePool(ctx context.Context, name string) error {
	return r.change(ctx, func(d *store.Doc) error { return remove(d, kindPool, name) })
}

// AddProvider implements admin.Repository.
func (r repository) AddProvider(ctx context.Context, in admin.ProviderInput) (admin.RepoProvider, error) {
	if err := r.change(ctx, func(d *store.Doc) error { return add(d, kindProvider, providerEntity(in)) }); err != nil {
		return admin.RepoProvider{}, err
	}
	return r.provider(ctx, in.Name)
}

// UpdateProvider implements admin.Repository.
func (r repository) UpdateProvider(ctx context.Context, in admin.ProviderInput) (admin.RepoProvider, error) {
	if err := r.change(ctx, func(d *store.Doc) error { return update(d, kindProvider, providerEntity(in)) }); err != nil {
		return admin.RepoProvider{}, err
	}
	return r.provider(ctx, in.Name)
}

// RemoveProvider implements admin.Repository.
func (r repository) RemoveProvider(ctx context.Context, name string) error {
	return r.change(ctx, func(d *store.Doc) error { return remove(d, kindProvider, name) })
}

// editProviderIPs changes a provider's ipList with edit, as an update.
func (r repository) editProviderIPs(ctx context.Context, name string, edit func([]any) ([]any, error)) (admin.RepoProvider, error) {
	err := r.change(ctx, func(d *store.Doc) error {
		i := find(d.Providers, name)
		if i < 0 {
			return fmt.Errorf("Provider '%s' not found in the repository.", name)
		}
		e := store.Clone(store.Doc{Providers: []store.Entity{d.Providers[i]}}).Providers[0]
		l, _ := e["ipList"].([]any)
		l, err := edit(l)
		if err != nil {
			return err
		}
		e["ipList"] = l
		return update(d, kindProvider, e)
	})
	if err != nil {
		return admin.RepoProvider{}, err
	}
	return r.provider(ctx, name)
}

// AddIPToProvider implements admin.Repository.
func (r repository) AddIPToProvider(ctx context.Context, provider, address string) (admin.RepoProvider, error) {
	if err := checkAddress(address); err != nil {
		return admin.RepoProvider{}, err
	}
	return r.editProviderIPs(ctx, provider, func(l []any) ([]any, error) {
		if slices.Contains(l, any(address)) {
			return nil, fmt.Errorf("Address '%s' already in provider '%s'.", address, provider)
		}
		return append(l, address), nil
	})
}

// RemoveIPFromProvider implements admin.Repository.
func (r repository) RemoveIPFromProvider(ctx context.Context, provider, address string) (admin.RepoProvider, error) {
	return r.editProviderIPs(ctx, provider, func(l []any) ([]any, error) {
		i := slices.Index(l, any(address))
		if i < 0 {
			return nil, fmt.Errorf("Address '%s' not found in provider '%s'.", address, provider)
		}
		if len(l) == 1 {
			return nil, fmt.Errorf("Cannot remove '%s' from provider '%s': the provider must have at least one IP.", address, provider)
		}
		return slices.Delete(l, i, i+1), nil
	})
}

// checkAddress refuses what cannot be an upstream address: a host, or
// host:port, of bounded length without spaces or credentials.
func checkAddress(addr string) error {
	if addr == "" || len(addr) > 262 {
		return fmt.Errorf("Address '%.64s' is not a host or host:port.", addr)
	}
	host := addr
	if h, p, err := net.SplitHostPort(addr); err == nil {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("Address '%s' has a bad port.", addr)
		}
		host = h
	}
	for _, c := range host {
		if c <= ' ' || c == '@' || c == '/' || c == 0x7f {
			return fmt.Errorf("Address '%.64s' is not a host or host:port.", addr)
		}
	}
	return nil
}
