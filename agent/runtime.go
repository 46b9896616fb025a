package agent

// The runtime configuration. Providers, IP pools and targets live in a
// store.Store: in the process with the memory backend, in Redis with the
// Redis backend, where every agent on that Redis and key prefix shares
// them. The rule that combines the config file, reloads and runtime
// changes (docs/runtime.md):
//
//   - At start and at every reload (SIGHUP, file watch) the file seeds the
//     store: an entity with `static: true` (the default in the file) is
//     the file's and is written as the file has it; one with
//     `static: false` is written only when the store has none of that
//     name, and is the store's from then on. A static entity that is no
//     longer in the file is removed; entities added at run time (not
//     static) stay.
//   - Changes at run time (the admin API) change the store; the admin JSON
//     API's IP edits are kept there per target, on top of what the
//     entities resolve to, and last until reverted or the target goes.
//   - The agent serves what the store holds, resolved against the file's
//     other sections, and applies every new version (a notification, or
//     a resync) with the reload machinery. A change that would not
//     validate is refused with validate's messages; nothing is stored.
//   - `validate` checks the file alone.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/pool"
	redisbackend "github.com/proxy-hopper/proxy-hopper/pool/redis"
	"github.com/proxy-hopper/proxy-hopper/store"
)

// storeTimeout bounds one store operation at start and in the watcher.
const storeTimeout = 10 * time.Second

// openStore returns the runtime store that goes with backend b.
func openStore(b pool.Backend, o Options) store.Store {
	if o.Store != nil {
		return o.Store
	}
	if rb, ok := b.(*redisbackend.Backend); ok {
		return rb.Store(redisbackend.StoreOptions{})
	}
	return store.NewMemory()
}

// isStatic reports whether an entity is the file's (static, the default).
func isStatic(e store.Entity) bool {
	v, ok := e["static"].(bool)
	return !ok || v
}

// mergeSection seeds one section: the file's entities in the file's order
// (a non-static one yields to a stored one of its name), then the stored
// entities the file does not name, unless static.
func mergeSection(stored, file []store.Entity) []store.Entity {
	named := make(map[string]store.Entity, len(stored))
	for _, e := range stored {
		named[store.Name(e)] = e
	}
	inFile := make(map[string]bool, len(file))
	out := make([]store.Entity, 0, len(file)+len(stored))
	for _, e := range file {
		n := store.Name(e)
		inFile[n] = true
		if s, ok := named[n]; ok && !isStatic(e) {
			e = s
		}
		out = append(out, e)
	}
	for _, e := range stored {
		if !inFile[store.Name(e)] && !isStatic(e) {
			out = append(out, e)
		}
	}
	return out
}

// seedDoc seeds d from the file's entities (the rule above) and drops the
// IP edits of targets that are gone.
func seedDoc(file *config.Config, d *store.Doc) {
	pr, po, ta := file.Entities()
	d.Providers = mergeSection(d.Providers, pr)
	d.Pools = mergeSection(d.Pools, po)
	d.Targets = mergeSection(d.Targets, ta)
	pruneEdits(d)
}

// pruneEdits drops the IP edits of targets d no longer has.
func pruneEdits(d *store.Doc) {
	for name := range d.IPEdits {
		if !slices.ContainsFunc(d.Targets, func(e store.Entity) bool { return store.Name(e) == name }) {
			delete(d.IPEdits, name)
		}
	}
}

// effectiveConfig is the file's config with d's entities, resolved, with
// d's IP edits applied to the targets.
func effectiveConfig(file *config.Config, d store.Doc) (*config.Config, []config.ResolvedTarget, error) {
	cfg, err := file.WithEntities(d.Providers, d.Pools, d.Targets)
	if err != nil {
		return nil, nil, err
	}
	res, err := cfg.Resolve()
	if err != nil {
		return nil, nil, err
	}
	targets := res.Targets
	for i := range targets {
		if e := d.IPEdits[targets[i].Name]; e != nil {
			targets[i].IPs = applyEdit(targets[i].IPs, e)
		}
	}
	return cfg, targets, nil
}

// applyEdit removes e.Removed from ips and appends e.Added not already in.
func applyEdit(ips []config.ResolvedIP, e *store.IPEdit) []config.ResolvedIP {
	out := slices.DeleteFunc(slices.Clone(ips), func(ip config.ResolvedIP) bool { return slices.Contains(e.Removed, ip.Addr()) })
	for _, addr := range e.Added {
		if slices.ContainsFunc(out, func(ip config.ResolvedIP) bool { return ip.Addr() == addr }) {
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil {
			continue // checked when the edit was made
		}
		out = append(out, config.ResolvedIP{Host: host, Port: n})
	}
	return out
}

// errNoChange aborts a store update that has nothing to write.
var errNoChange = errors.New("no change")

// seedStore seeds the store from file and returns the config and targets
// to serve. A seed that would not validate is refused: nothing is stored.
func (a *Agent) seedStore(ctx context.Context, file *config.Config) (store.Doc, *config.Config, []config.ResolvedTarget, error) {
	var cfg *config.Config
	var targets []config.ResolvedTarget
	d, err := a.rs.Update(ctx, func(d *store.Doc, _ bool) error {
		seedDoc(file, d)
		var err error
		cfg, targets, err = effectiveConfig(file, *d)
		if err != nil {
			return fmt.Errorf("the config file with the runtime configuration: %w", err)
		}
		return nil
	})
	return d, cfg, targets, err
}

// initialTargets seeds the store at start and returns what to serve. When
// the store does not answer, the file's entities are served and the seed
// is retried by the store watcher.
func (a *Agent) initialTargets(ctx context.Context, res *config.Resolved) (*config.Config, []config.ResolvedTarget, error) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	d, cfg, targets, err := a.seedStore(sctx, res.Config)
	var ve *config.ValidationError
	switch {
	case err == nil:
		a.reload.applied, a.reload.doc = d.ID(), d
		return cfg, targets, nil
	case errors.As(err, &ve):
		return nil, nil, err
	}
	a.log.Warn("the runtime configuration store does not answer; serving the config file's targets until it does", "err", err)
	a.reload.needSeed = true
	return res.Config, res.Targets, nil
}

// syncStore brings the agent to the store's current version: it seeds a
// store that could not be seeded, writes the configuration in force back
// to a store that lost it (a Redis restarted empty), and applies a new
// version. The caller must not hold a.reload.mu.
func (a *Agent) syncStore(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	st := &a.reload
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.needSeed {
		d, cfg, targets, err := a.seedStore(ctx, st.file)
		if err != nil {
			a.log.Warn("cannot seed the runtime configuration store yet", "err", err)
			return
		}
		st.needSeed = false
		a.applyDocLocked(ctx, d, cfg, targets)
		return
	}
	d, seeded, err := a.rs.Load(ctx)
	if err != nil {
		a.log.Warn("cannot read the runtime configuration store", "err", err)
		return
	}
	if !seeded {
		// The storage lost it: write back what this agent serves (the
		// fleet's last version), unless another agent was first.
		mine := store.Clone(st.doc)
		d, err = a.rs.Update(ctx, func(d *store.Doc, seeded bool) error {
			if seeded {
				return errNoChange
			}
			*d = mine
			return nil
		})
		switch {
		case errors.Is(err, errNoChange):
			if d, _, err = a.rs.Load(ctx); err != nil {
				return
			}
		case err != nil:
			a.log.Warn("cannot restore the runtime configuration store", "err", err)
			return
		default:
			a.log.Warn("the runtime configuration store was empty (storage restarted?): wrote back the configuration in force", "version", d.Version)
		}
	}
	if d.ID() == st.applied {
		return
	}
	cfg, targets, err := effectiveConfig(st.file, d)
	if err != nil {
		st.applied = d.ID() // not again for this version
		a.log.Error("runtime configuration not applied; the running config stays", "version", d.Version, "reason", err.Error())
		return
	}
	a.applyDocLocked(ctx, d, cfg, targets)
}

// applyDocLocked applies a store version; the caller holds a.reload.mu.
func (a *Agent) applyDocLocked(ctx context.Context, d store.Doc, cfg *config.Config, targets []config.ResolvedTarget) {
	st := &a.reload
	if d.ID() == st.applied && st.rts != nil {
		return
	}
	out, err := a.applyResolved(ctx, cfg, targets)
	st.applied, st.doc = d.ID(), d
	if err != nil {
		a.log.Error("runtime configuration not applied; the running config stays", "version", d.Version, "reason", err.Error())
		return
	}
	st.cfg = cfg
	a.log.Info("runtime configuration applied", "version", d.Version,
		"targets_added", out.Added, "targets_removed", out.Removed, "targets_changed", out.Changed,
		"ips_added", out.IPsAdded, "ips_removed", out.IPsRemoved)
}

// changeRuntime changes the store with fn, given the targets as they
// resolve now. The result must validate against the file's config, or
// nothing is stored and the error says why (fn's own errors come back as
// they are). The change applies here before it returns; the other agents
// follow their notification.
func (a *Agent) changeRuntime(ctx context.Context, fn func(d *store.Doc, targets []config.ResolvedTarget) error) error {
	a.reload.mu.Lock()
	file, mine := a.reload.file, store.Clone(a.reload.doc)
	a.reload.mu.Unlock()
	_, err := a.rs.Update(ctx, func(d *store.Doc, seeded bool) error {
		if !seeded {
			*d = store.Clone(mine)
		}
		_, targets, err := effectiveConfig(file, *d)
		if err != nil {
			return fmt.Errorf("the stored runtime configuration does not validate: %w", err)
		}
		if err := fn(d, targets); err != nil {
			return err
		}
		pruneEdits(d)
		if _, _, err := effectiveConfig(file, *d); err != nil {
			return err
		}
		return nil
	})
	if errors.Is(err, store.ErrClosed) {
		return fmt.Errorf("%w: %w", pool.ErrClosed, err)
	}
	if err != nil {
		return err
	}
	a.syncStore(ctx)
	return nil
}

// watchStore applies the store's new versions until ctx ends.
func (a *Agent) watchStore(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.rs.Changed():
			a.syncStore(ctx)
		}
	}
}
