package redis_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
)

// The Redis keys of the Python proxy-hopper (its fixed prefix "ph",
// "ph:<target>:<kind>") and this backend's never meet, even under the
// default prefix "ph:": a fleet cut over to this agent leaves the old
// fleet's keys as they were, and with a prefix of its own ("phgo:") the
// pattern ph:* lists exactly the old keys (docs/migration.md, Cutting
// over a fleet on Redis).
func TestOriginalKeysUntouched(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	ctx := context.Background()
	opt, err := goredis.ParseURL(srv.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	rc := goredis.NewClient(opt)
	defer rc.Close()
	const addr = "10.0.0.1:3128"
	// The original's layout for target "web" (pool_store.py key names).
	original := map[string]string{
		"ph:web:init":                "1",
		"ph:web:identity:u1":         `{"address":"10.0.0.1:3128"}`,
		"ph:web:ip:" + addr:          "u1",
		"ph:web:retired:10.0.0.9:80": "1",
		"ph:web:failures:" + addr:    "2",
	}
	for k, v := range original {
		if err := rc.Set(ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rc.RPush(ctx, "ph:web:pool", "u1", "u2").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.ZAdd(ctx, "ph:web:quarantine", goredis.Z{Score: 1.9e9, Member: "10.0.0.2:3128"}).Err(); err != nil {
		t.Fatal(err)
	}
	dump := func() map[string]string {
		out := map[string]string{}
		keys, err := rc.Keys(ctx, "ph:web:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			d, err := rc.Dump(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			out[k] = d
		}
		return out
	}
	before := dump()
	if len(before) != 7 {
		t.Fatalf("original keys: %d, want 7", len(before))
	}

	for _, prefix := range []string{redis.DefaultPrefix, "phgo:"} {
		b := newBackend(t, srv.URL(0), redis.Options{Prefix: prefix})
		if err := b.Seed(ctx, "web", []string{addr, "10.0.0.2:3128"}); err != nil {
			t.Fatal(err)
		}
		ip := mustPopTarget(t, b, "web")
		if _, err := b.IncrFailures(ctx, "web", ip); err != nil {
			t.Fatal(err)
		}
		if err := b.Quarantine(ctx, "web", ip, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		ip = mustPopTarget(t, b, "web")
		if err := b.Push(ctx, "web", ip, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		all, err := rc.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		var ours []string
		for _, k := range all {
			if _, old := before[k]; old {
				continue
			}
			if strings.HasPrefix(k, prefix+"{web}:") {
				ours = append(ours, k)
				continue
			}
			if prefix == redis.DefaultPrefix || !strings.HasPrefix(k, redis.DefaultPrefix+"{web}:") {
				t.Errorf("prefix %q: key %q is neither the original's nor under %s{web}:", prefix, k, prefix)
			}
		}
		if len(ours) == 0 {
			t.Errorf("prefix %q: no key of this backend found", prefix)
		}
		if after := dump(); !maps.Equal(before, after) {
			t.Errorf("prefix %q: the original's keys changed: %d before, %d after", prefix, len(before), len(after))
		}
		if prefix == "phgo:" {
			// What the cut-over deletes once it is final: the old keys
			// and the first run's "ph:{web}:" keys, none of "phgo:".
			old, err := rc.Keys(ctx, "ph:*").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range old {
				if _, orig := before[k]; !orig && !strings.HasPrefix(k, "ph:{web}:") {
					t.Errorf("ph:* lists %q", k)
				}
			}
			if slices.ContainsFunc(old, func(k string) bool { return strings.HasPrefix(k, "phgo:") }) {
				t.Errorf("ph:* lists keys of prefix phgo:")
			}
		}
	}
}
