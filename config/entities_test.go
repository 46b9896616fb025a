package config

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestEntitiesRoundTrip: every example's entities, through JSON (as the
// runtime store keeps them) and back, resolve to the same targets.
func TestEntitiesRoundTrip(t *testing.T) {
	clearEnv(t)
	files, _ := filepath.Glob("testdata/proxy-hopper/*.yaml")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f, nil)
			if err != nil {
				t.Fatal(err)
			}
			giveAdminToken(cfg)
			want, err := cfg.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			pr, po, ta := cfg.Entities()
			if len(ta) != len(cfg.Targets) {
				t.Fatalf("%d target entities, %d targets", len(ta), len(cfg.Targets))
			}
			again, err := cfg.WithEntities(pr, po, ta)
			if err != nil {
				t.Fatalf("WithEntities: %v", err)
			}
			got, err := again.Resolve()
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if !reflect.DeepEqual(got.Targets, want.Targets) {
				t.Errorf("targets differ after the round trip:\n%+v\nwant\n%+v", got.Targets, want.Targets)
			}
		})
	}
}

// TestWithEntitiesProblems: an entity from the store gets the messages a
// file's entity gets, and spellings are normalized the same way.
func TestWithEntitiesProblems(t *testing.T) {
	clearEnv(t)
	cfg := mustLoad(t, minimal, nil)
	_, err := cfg.WithEntities(nil, nil, []map[string]any{{"name": "t", "regex": "x", "ipList": []any{"127.0.0.1:1"}, "numRetries": "many", "bogus": 1.0}})
	if err == nil || !strings.Contains(err.Error(), "targets[0] (t)") || !strings.Contains(err.Error(), "numRetries") || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("WithEntities: %v", err)
	}
	c2, err := cfg.WithEntities(nil, nil, []map[string]any{{"name": "t", "regex": "x", "ip_list": []any{"127.0.0.1:1"}, "num_retries": 4.0, "minRequestInterval": "2s"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c2.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Targets) != 1 || res.Targets[0].Name != "t" || c2.Targets[0].NumRetries != 4 || len(res.Targets[0].IPs) != 1 {
		t.Fatalf("resolved %+v", res.Targets)
	}
	if _, err := c2.WithEntities(nil, nil, []map[string]any{{"name": "t", "regex": "(", "ipList": []any{"127.0.0.1:1"}}}); err != nil {
		t.Fatal(err) // a bad regex is Resolve's problem
	}
	c3, _ := c2.WithEntities(nil, nil, []map[string]any{{"name": "t", "regex": "(", "ipList": []any{"127.0.0.1:1"}}})
	if _, err := c3.Resolve(); err == nil || !strings.Contains(err.Error(), "targets[0] (t)") {
		t.Fatalf("Resolve of a bad regex: %v", err)
	}
}
