// Package storetest is the contract every store.Store keeps, run against
// two handles on one storage, as two agents on one Redis see it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/store"
)

// Open returns two handles on one fresh, empty storage.
type Open func(t *testing.T) (a, b store.Store)

// NotifyWithin is how soon another handle must hear of a change.
const NotifyWithin = time.Second

// Run runs every contract test.
func Run(t *testing.T, open Open) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T, store.Store, store.Store)
	}{
		{"Empty", testEmpty},
		{"SeedAndRead", testSeedAndRead},
		{"Notifies", testNotifies},
		{"AbortStoresNothing", testAbort},
		{"ConcurrentUpdatesLoseNothing", testConcurrent},
		{"TooLarge", testTooLarge},
		{"CopiesAreIndependent", testCopies},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := open(t)
			tc.f(t, a, b)
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func load(t *testing.T, s store.Store) (store.Doc, bool) {
	t.Helper()
	d, seeded, err := s.Load(ctx(t))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return d, seeded
}

// drain empties s's change channel.
func drain(s store.Store) {
	for {
		select {
		case <-s.Changed():
		default:
			return
		}
	}
}

func heard(t *testing.T, s store.Store, what string) {
	t.Helper()
	select {
	case <-s.Changed():
	case <-time.After(NotifyWithin):
		t.Fatalf("%s: no change notification within %s", what, NotifyWithin)
	}
}

func target(name string, extra ...any) store.Entity {
	e := store.Entity{"name": name, "regex": name + `\.example`, "ipList": []any{"127.0.0.1:3128"}}
	for i := 0; i+1 < len(extra); i += 2 {
		e[extra[i].(string)] = extra[i+1]
	}
	return e
}

func testEmpty(t *testing.T, a, b store.Store) {
	if d, seeded := load(t, a); seeded || d.Version != 0 || d.Targets != nil {
		t.Fatalf("empty store: %+v seeded=%v", d, seeded)
	}
}

func testSeedAndRead(t *testing.T, a, b store.Store) {
	d, err := a.Update(ctx(t), func(d *store.Doc, seeded bool) error {
		if seeded {
			return errors.New("seeded before the first update")
		}
		d.Providers = []store.Entity{{"name": "p", "ipList": []any{"10.0.0.1:8080"}, "static": false}}
		d.Pools = []store.Entity{{"name": "q", "ipRequests": []any{map[string]any{"provider": "p", "count": 1.0}}}}
		d.Targets = []store.Entity{target("b"), target("a", "numRetries", 2.0, "identity", map[string]any{"enabled": true})}
		return nil
	})
	if err != nil || d.Version != 1 {
		t.Fatalf("first Update: %+v, %v", d, err)
	}
	got, seeded := load(t, b)
	if !seeded || got.Version != 1 || len(got.Targets) != 2 || store.Name(got.Targets[0]) != "b" || store.Name(got.Targets[1]) != "a" {
		t.Fatalf("other handle reads %+v seeded=%v", got, seeded)
	}
	if got.Targets[1]["numRetries"] != 2.0 || got.Targets[1]["identity"].(map[string]any)["enabled"] != true ||
		got.Pools[0]["ipRequests"].([]any)[0].(map[string]any)["count"] != 1.0 || got.Providers[0]["static"] != false {
		t.Fatalf("values did not round-trip: %+v", got)
	}
	d, err = b.Update(ctx(t), func(d *store.Doc, seeded bool) error {
		if !seeded || d.Version != 1 {
			return fmt.Errorf("second update sees version %d seeded=%v", d.Version, seeded)
		}
		d.Targets = d.Targets[1:]
		return nil
	})
	if err != nil || d.Version != 2 || len(d.Targets) != 1 {
		t.Fatalf("second Update: %+v, %v", d, err)
	}
	if got, _ := load(t, a); got.Version != 2 || len(got.Targets) != 1 || store.Name(got.Targets[0]) != "a" {
		t.Fatalf("after the second update: %+v", got)
	}
}

func testNotifies(t *testing.T, a, b store.Store) {
	drain(a)
	drain(b)
	if _, err := a.Update(ctx(t), func(d *store.Doc, _ bool) error { d.Targets = append(d.Targets, target("x")); return nil }); err != nil {
		t.Fatal(err)
	}
	heard(t, b, "the other handle")
	heard(t, a, "the writer")
	// Many changes coalesce: the writer never blocks on a reader that
	// does not read.
	for i := range 50 {
		if _, err := a.Update(ctx(t), func(d *store.Doc, _ bool) error {
			d.Targets = append(d.Targets, target(fmt.Sprint("y", i)))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	heard(t, b, "after 50 changes")
}

func testAbort(t *testing.T, a, b store.Store) {
	if _, err := a.Update(ctx(t), func(d *store.Doc, _ bool) error { d.Targets = []store.Entity{target("kept")}; return nil }); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("targets[1] (bad): regex: missing closing )")
	_, err := b.Update(ctx(t), func(d *store.Doc, _ bool) error {
		d.Targets = append(d.Targets, target("bad"))
		return refused
	})
	if !errors.Is(err, refused) {
		t.Fatalf("Update with a refusing fn: %v, want the fn's error", err)
	}
	if got, _ := load(t, a); got.Version != 1 || len(got.Targets) != 1 {
		t.Fatalf("after a refused update: %+v", got)
	}
}

// testConcurrent: writers on both handles each add their own entities;
// every one is there at the end and the version counts every update.
func testConcurrent(t *testing.T, a, b store.Store) {
	const writers, each = 4, 15
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				_, err := s.Update(context.Background(), func(d *store.Doc, _ bool) error {
					d.Targets = append(d.Targets, target(fmt.Sprintf("w%d-%d", w, i)))
					return nil
				})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Update: %v", err)
	}
	got, _ := load(t, a)
	if got.Version != writers*each || len(got.Targets) != writers*each {
		t.Fatalf("after %d updates: version %d, %d targets", writers*each, got.Version, len(got.Targets))
	}
	seen := map[string]bool{}
	for _, e := range got.Targets {
		seen[store.Name(e)] = true
	}
	for w := range writers {
		for i := range each {
			if !seen[fmt.Sprintf("w%d-%d", w, i)] {
				t.Fatalf("update w%d-%d lost", w, i)
			}
		}
	}
}

func testTooLarge(t *testing.T, a, b store.Store) {
	if _, err := a.Update(ctx(t), func(d *store.Doc, _ bool) error { d.Targets = []store.Entity{target("small")}; return nil }); err != nil {
		t.Fatal(err)
	}
	_, err := a.Update(ctx(t), func(d *store.Doc, _ bool) error {
		d.Targets = append(d.Targets, target("big", "regex", strings.Repeat("x", store.MaxDocBytes)))
		return nil
	})
	if !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("Update past MaxDocBytes: %v, want ErrTooLarge", err)
	}
	if got, _ := load(t, b); got.Version != 1 || len(got.Targets) != 1 {
		t.Fatalf("after a refused large update: version %d, %d targets", got.Version, len(got.Targets))
	}
}

func testCopies(t *testing.T, a, b store.Store) {
	d, err := a.Update(ctx(t), func(d *store.Doc, _ bool) error { d.Targets = []store.Entity{target("t")}; return nil })
	if err != nil {
		t.Fatal(err)
	}
	d.Targets[0]["regex"] = "changed by the caller"
	l, _ := load(t, a)
	l.Targets[0]["ipList"].([]any)[0] = "changed too"
	if got, _ := load(t, b); got.Targets[0]["regex"] != `t\.example` || got.Targets[0]["ipList"].([]any)[0] != "127.0.0.1:3128" {
		t.Fatalf("a caller's copy changed the store: %+v", got.Targets[0])
	}
}
