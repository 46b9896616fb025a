package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// A request queued for an IP is abandoned when its client hangs up: it
// does not take the IP when one frees up, nothing goes upstream, and its
// outcome is client_closed. A client that stays gets the IP as before.
func TestQueuedRequestAbandonedOnHangUp(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, quiet: true, cfg: pool.Config{MaxQueueWait: 10 * time.Second}})
	ctx := context.Background()
	// The test holds the only IP, so requests queue.
	ip, err := e.pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(o.URL, "http://")
	for _, raw := range []string{
		"GET /gone HTTP/1.1\r\nHost: a\r\n" + HeaderTarget + ": " + o.URL + "\r\n\r\n",
		"CONNECT " + host + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n",
	} {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 5*time.Second, func() error {
			if n := e.pool().Waiting(); n != 1 {
				return fmt.Errorf("%d requests waiting for the IP, want 1", n)
			}
			return nil
		})
		c.Close()
	}
	evs := e.requestsN(t, 2)
	for _, ev := range evs {
		if ev.Outcome != OutcomeClientClosed {
			t.Errorf("event %+v: want outcome %s", ev, OutcomeClientClosed)
		}
		if ev.QueueWait > 5*time.Second {
			t.Errorf("event %+v: the wait did not end with the client", ev)
		}
	}
	// The IP comes back; a client that stays is served through it, and
	// the upstream saw only that request.
	if err := e.pool().Release(ctx, ip, pool.Neutral); err != nil {
		t.Fatal(err)
	}
	out := rawRequest(t, e.addr, "GET /stays HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"+HeaderTarget+": "+o.URL+"\r\n\r\n")
	if !strings.Contains(out, " 200 ") {
		t.Fatalf("request after the IP came back: %q", out)
	}
	if reqs := e.upstream[0].Requests(t); len(reqs) != 1 || !strings.Contains(reqs[0], "/stays") {
		t.Errorf("upstream saw %v, want only /stays", reqs)
	}
}

// Hooks.Then calls both hooks in order and keeps a lone one as it is.
func TestHooksThen(t *testing.T) {
	var got []string
	a := Hooks{Request: func(ev RequestEvent) { got = append(got, "a "+ev.Target) }}
	b := Hooks{
		Request: func(ev RequestEvent) { got = append(got, "b "+ev.Target) },
		Attempt: func(ev AttemptEvent) { got = append(got, "b attempt "+ev.Target) },
	}
	h := a.Then(b)
	h.Request(RequestEvent{Target: "t"})
	h.Attempt(AttemptEvent{Target: "u"})
	if want := []string{"a t", "b t", "b attempt u"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("calls %q, want %q", got, want)
	}
	if h := (Hooks{}).Then(Hooks{}); h.Request != nil || h.Attempt != nil {
		t.Error("Then of empty hooks is not empty")
	}
}
