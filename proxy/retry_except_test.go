package proxy

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// A retry waits for an IP the request has not tried instead of taking the
// failed one again: with the live IP busy, the dead IP is free at once
// (no cooldown, no quarantine yet), and the retry must still go to the
// live IP when it comes free.
func TestE2ERetryTakesAnUntriedIP(t *testing.T) {
	t.Parallel()
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	entered := make(chan struct{}, 4)
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			<-hold
		}
		w.Write([]byte("ok " + r.URL.Path))
	})
	t.Cleanup(release) // runs before the origin's Close, which waits for handlers
	dead := deadAddr(t)
	e := newEnv(t, envOptions{leading: []string{dead}, upstreams: 1, retries: 1,
		cfg: pool.Config{FailuresUntilQuarantine: 10, MaxQueueWait: 20 * time.Second}})
	live := e.upstream[0].Addr
	c := e.headerClient()

	// A: dead (refused), then live, where the origin holds it.
	aDone := make(chan string, 1)
	go func() {
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/hold", nil))
		aDone <- resp.Status + " " + body
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("request A never reached the origin")
	}
	// B: dead again (the only free IP), then its retry must wait for live.
	bDone := make(chan string, 1)
	go func() {
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/b", nil))
		bDone <- resp.Status + " " + body
	}()
	// A's first attempt and B's first attempt failed on dead (A's attempt
	// on live is reported when it ends); B's retry waits for live.
	if log := e.attemptsN(t, 2); len(log) != 2 || log[0].Addr != dead || log[1].Addr != dead {
		t.Fatalf("attempts %+v, want A: dead; B: dead", log)
	}
	release()
	if got := <-aDone; got != "200 OK ok /hold" {
		t.Fatalf("A: %s", got)
	}
	if got := <-bDone; got != "200 OK ok /b" {
		t.Fatalf("B: %s, want its retry served by the live IP", got)
	}
	log := e.attemptsN(t, 4)
	if len(log) != 4 || log[2].Addr != live || log[3].Addr != live || !log[3].OK {
		t.Errorf("attempts %+v, want B's retry via %s", log, live)
	}
}

// Each wait for an IP is reported (Hooks.Acquire), the retry's marked, and
// each attempt carries its request's mode and tag, which metrics label
// per attempt as proxy-hopper does.
func TestE2EAcquireAndAttemptEventsCarryTheRequest(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	var mu sync.Mutex
	var waits []AcquireEvent
	e := newEnv(t, envOptions{leading: []string{deadAddr(t)}, upstreams: 1, retries: 1, quiet: true,
		cfg: pool.Config{FailuresUntilQuarantine: 10},
		opts: Options{Hooks: Hooks{Acquire: func(a AcquireEvent) {
			mu.Lock()
			waits = append(waits, a)
			mu.Unlock()
		}}}})
	req := e.newReq(t, "GET", o.URL, "/", nil)
	req.Header.Set(HeaderTag, "search")
	if resp, body := do(t, e.headerClient(), req); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("request: %d %q", resp.StatusCode, body)
	}
	log := e.attemptsN(t, 2)
	for i, a := range log {
		if a.Mode != "header" || a.Tag != "search" || a.Tunnel() {
			t.Errorf("attempt %d: mode %q tag %q tunnel %v, want header, search, false", i, a.Mode, a.Tag, a.Tunnel())
		}
	}
	if len(log) != 2 || log[0].OK || !log[1].OK {
		t.Errorf("attempts %+v, want the dead IP's failure, then a success", log)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(waits) != 2 || waits[0].Retry || !waits[1].Retry || waits[0].Err != nil || waits[1].Err != nil ||
		waits[0].Target != "t1" || waits[1].Mode != "header" {
		t.Errorf("acquire events %+v, want the first wait and the retry's, both with an IP", waits)
	}
}
