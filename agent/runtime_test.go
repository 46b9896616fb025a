package agent

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// ipsOf lists the addresses e's admin API shows for target web.
func (e *adminEnv) ipsOf() []string {
	e.t.Helper()
	var out []string
	for _, ip := range e.target("web").IPs {
		if !ip.Draining {
			out = append(out, ip.Address)
		}
	}
	slices.Sort(out)
	return out
}

// serves waits until every agent lists exactly want for web.
func serves(t *testing.T, within time.Duration, want []string, agents ...*adminEnv) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	testenv.Eventually(t, within, func() error {
		for i, e := range agents {
			if got := e.ipsOf(); !slices.Equal(got, want) {
				return fmt.Errorf("agent %d serves %v, want %v", i, got, want)
			}
		}
		return nil
	})
}

// TestRuntimeEditsOutliveReloads (memory backend): an IP added and one
// removed through the admin API stay so across a reload of the file, and
// a change of the file still applies next to them.
func TestRuntimeEditsOutliveReloads(t *testing.T) {
	a1 := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	a2 := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, "", oneTarget(a1.Addr, a2.Addr))
	e.api("POST", "/api/targets/web/ips", `{"address": "127.0.0.9:3128"}`, 201)
	e.api("DELETE", "/api/targets/web/ips/"+a2.Addr, "", 200)
	serves(t, time.Second, []string{a1.Addr, "127.0.0.9:3128"}, e)

	// The file changes the target's retries: a reload applies it, the edits stay.
	path := e.path
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), "numRetries: 2", "numRetries: 1", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	next, err := loadResolved(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.a.Reload(t.Context(), next)
	if err != nil || !slices.Equal(res.Changed, []string{"web"}) {
		t.Fatalf("reload: %+v %v", res, err)
	}
	serves(t, time.Second, []string{a1.Addr, "127.0.0.9:3128"}, e)
	// Putting the removed IP back reverts the edit.
	e.api("POST", "/api/targets/web/ips", `{"address": "`+a2.Addr+`"}`, 201)
	e.api("DELETE", "/api/targets/web/ips/127.0.0.9:3128", "", 200)
	serves(t, time.Second, []string{a1.Addr, a2.Addr}, e)
	e.a.reload.mu.Lock()
	edits := e.a.reload.doc.IPEdits
	e.a.reload.mu.Unlock()
	if len(edits) != 0 {
		t.Errorf("reverted edits are still stored: %+v", edits)
	}
	if got := e.fetch("/after"); got != 200 {
		t.Errorf("request after the edits: %d", got)
	}
}

// TestRuntimeFleet: three agents on one Redis. An IP edit through any
// agent's admin API is served by all within a second; concurrent edits
// through two agents lose nothing; an agent stopped and started again
// serves the changed list; after Redis restarts empty, the agents write
// the configuration back and a new edit still reaches every agent.
func TestRuntimeFleet(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	server := fmt.Sprintf("  backend: redis\n  redisUrl: %s\n  redisKeyPrefix: 'fleet-%d:'", srv.URL(0), os.Getpid())
	start := func() *adminEnv { return startAdminAgent(t, server, oneTarget(tp.Addr)) }
	e1, e2, e3 := start(), start(), start()

	e1.api("POST", "/api/targets/web/ips", `{"address": "127.0.0.9:3128"}`, 201)
	serves(t, time.Second, []string{tp.Addr, "127.0.0.9:3128"}, e1, e2, e3)
	e2.api("DELETE", "/api/targets/web/ips/127.0.0.9:3128", "", 200)
	serves(t, time.Second, []string{tp.Addr}, e1, e2, e3)
	if got := e3.fetch("/fleet"); got != 200 {
		t.Errorf("request through the fleet: %d", got)
	}

	// Concurrent edits through two agents.
	var wg sync.WaitGroup
	var want []string
	for i, e := range []*adminEnv{e1, e2} {
		for j := range 8 {
			addr := fmt.Sprintf("127.0.%d.%d:3128", 10+i, 1+j)
			want = append(want, addr)
			wg.Go(func() {
				if code, body := e.call("POST", "/api/targets/web/ips", testAdminToken, `{"address": "`+addr+`"}`); code != 201 {
					t.Errorf("add %s: %d %s", addr, code, body)
				}
			})
		}
	}
	wg.Wait()
	want = append(want, tp.Addr)
	serves(t, time.Second, want, e1, e2, e3)

	// A restarted agent comes up with the fleet's list.
	e3.stop()
	e3 = start()
	serves(t, time.Second, want, e3)

	// Redis restarts empty: the agents keep serving, write the list
	// back, and an edit after that reaches all of them.
	srv.Stop()
	srv.Start()
	testenv.Eventually(t, 10*time.Second, func() error {
		if out, err := srv.Do("EXISTS", fmt.Sprintf("fleet-%d:{repo}:doc", os.Getpid())); err != nil || strings.TrimSpace(out) != "1" {
			return errors.New("the configuration is not written back yet")
		}
		return nil
	})
	serves(t, time.Second, want, e1, e2, e3)
	testenv.Eventually(t, 10*time.Second, func() error {
		if code, body := e3.call("POST", "/api/targets/web/ips", testAdminToken, `{"address": "127.0.0.99:3128"}`); code != 201 && code != 409 {
			return fmt.Errorf("add after the Redis restart: %d %s", code, body)
		}
		return nil
	})
	serves(t, 3*time.Second, append(want, "127.0.0.99:3128"), e1, e2, e3)
}
