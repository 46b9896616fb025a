package redis_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
	"github.com/proxy-hopper/proxy-hopper/store"
	"github.com/proxy-hopper/proxy-hopper/store/storetest"
)

// openStores returns two Stores on one prefix through two backends, as two
// agents on one Redis.
func openStores(t *testing.T, url string, resync time.Duration) (*redis.Store, *redis.Store) {
	prefix := newPrefix()
	a := newBackend(t, url, redis.Options{Prefix: prefix}).Store(redis.StoreOptions{Resync: resync})
	b := newBackend(t, url, redis.Options{Prefix: prefix}).Store(redis.StoreOptions{Resync: resync})
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestStoreContract(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	storetest.Run(t, func(t *testing.T) (store.Store, store.Store) { return openStores(t, srv.URL(0), 0) })
}

func TestStoreContractCluster(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{Cluster: true})
	storetest.Run(t, func(t *testing.T) (store.Store, store.Store) { return openStores(t, srv.URL(0), 0) })
}

// TestStoreRedisRestart: Redis restarts empty (no persistence). Each
// Store notices within its resync that the stored version is gone, Load
// says the store is unseeded (so an agent writes its configuration back),
// and a change made after the restart reaches the other Store.
func TestStoreRedisRestart(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	a, b := openStores(t, srv.URL(0), 200*time.Millisecond)
	ctx := context.Background()
	if _, err := a.Update(ctx, func(d *store.Doc, _ bool) error {
		d.Targets = []store.Entity{{"name": "t", "regex": "x", "ipList": []any{"127.0.0.1:1"}}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wait := func(s store.Store, what string, within time.Duration) {
		t.Helper()
		select {
		case <-s.Changed():
		case <-time.After(within):
			t.Fatalf("%s: no notification within %s", what, within)
		}
	}
	wait(b, "first change", time.Second)
	srv.Stop()
	srv.Start()
	for _, s := range []store.Store{a, b} {
		for {
			wait(s, "after the restart", 5*time.Second)
			if _, seeded, err := s.Load(ctx); err == nil && !seeded {
				break
			}
		}
	}
	d, err := a.Update(ctx, func(d *store.Doc, seeded bool) error {
		if seeded {
			t.Error("Update after the restart sees a seeded store")
		}
		d.Targets = []store.Entity{{"name": "again", "regex": "y", "ipList": []any{"127.0.0.1:2"}}}
		return nil
	})
	if err != nil || d.Version != 1 {
		t.Fatalf("Update after the restart: %+v %v", d, err)
	}
	testenv.Eventually(t, 3*time.Second, func() error {
		got, seeded, err := b.Load(ctx)
		if err != nil {
			return err
		}
		if !seeded || got.Version != 1 || store.Name(got.Targets[0]) != "again" {
			return fmt.Errorf("the other store reads %+v (seeded %v)", got, seeded)
		}
		return nil
	})
	// The channel's subscription comes back on its own, and the resync
	// catches what it missed: bounded, not timed to the millisecond.
	wait(b, "the change after the restart", 10*time.Second)
}
