package config

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
)

// The entity sections (proxyProviders, ipPools, targets) are what the
// runtime store holds: YAML-shaped entries that the file seeds and the
// admin API changes. Entities and WithEntities convert between them and a
// Config, so that an entity from the store is checked with exactly the
// messages the file's would get.

// entitySections are the entity sections in the order they resolve.
var entitySections = []string{"proxyProviders", "ipPools", "targets"}

// decodeEntities decodes root's entity sections into cfg.
func decodeEntities(root map[string]any, cfg *Config, p *problems) {
	for i, raw := range listOf(root["proxyProviders"]) {
		var pc ProviderConfig
		decodeSection(raw, &pc, entityLabel("proxyProviders", i, raw), nil, p)
		pc.Mutable, pc.Static = orTrue(pc.Mutable), orTrue(pc.Static)
		cfg.ProxyProviders = append(cfg.ProxyProviders, pc)
	}
	for i, raw := range listOf(root["ipPools"]) {
		var pc IPPoolConfig
		decodeSection(raw, &pc, entityLabel("ipPools", i, raw), nil, p)
		pc.Mutable, pc.Static = orTrue(pc.Mutable), orTrue(pc.Static)
		cfg.IPPools = append(cfg.IPPools, pc)
	}
	for i, raw := range listOf(root["targets"]) {
		tc := DefaultTargetConfig()
		decodeSection(raw, &tc, entityLabel("targets", i, raw), nil, p)
		tc.setDefaults()
		cfg.Targets = append(cfg.Targets, tc)
	}
}

// Entities returns the providers, pools and targets of c as the file
// holds them (key spellings normalized), as JSON values: deep copies the
// caller may keep.
func (c *Config) Entities() (providers, pools, targets []map[string]any) {
	section := func(sec string) []map[string]any {
		var out []map[string]any
		for _, raw := range listOf(c.doc[sec]) {
			m, _ := raw.(map[string]any)
			out = append(out, m)
		}
		return jsonCopy(out)
	}
	return section("proxyProviders"), section("ipPools"), section("targets")
}

// WithEntities returns a copy of c whose providers, pools and targets are
// decoded from the given entities instead of the file's: the same
// spellings are accepted and the same problems reported (as a
// *ValidationError). Resolve then checks the result as a whole.
func (c *Config) WithEntities(providers, pools, targets []map[string]any) (*Config, error) {
	var p problems
	n := normalizer{p: &p}
	doc := map[string]any{}
	for sec, list := range map[string][]map[string]any{"proxyProviders": providers, "ipPools": pools, "targets": targets} {
		l := make([]any, len(list))
		for i, e := range list {
			l[i] = e
		}
		doc[sec] = l
	}
	root, _ := n.walk(doc, reflect.TypeOf(Config{}), "", "").(map[string]any)
	out := *c
	out.ProxyProviders, out.IPPools, out.Targets = nil, nil, nil
	out.doc = maps.Clone(c.doc)
	if out.doc == nil {
		out.doc = map[string]any{}
	}
	for _, sec := range entitySections {
		out.doc[sec] = root[sec]
	}
	decodeEntities(root, &out, &p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return &out, nil
}

// jsonCopy deep-copies YAML values as JSON values (numbers become
// float64), or nil for nil.
func jsonCopy(l []map[string]any) []map[string]any {
	if l == nil {
		return nil
	}
	b, err := json.Marshal(l)
	if err != nil {
		panic(fmt.Sprintf("config: entities are not JSON values: %v", err)) // YAML scalars, maps and lists only
	}
	var out []map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		panic(fmt.Sprintf("config: entities: %v", err))
	}
	return out
}
