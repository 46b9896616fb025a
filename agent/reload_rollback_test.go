package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// A reload the backend rejects (Redis down) after the new generation was
// published puts the old one back: a target that reload would have removed
// keeps its upstream connections across requests as before, instead of
// closing each one after its request (its transport was retired by the
// publication and stayed so after the rollback).
func TestReloadRollbackKeepsConnections(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	o := newRLOriginTLS(t, true) // connections kept per IP: TLS through a CONNECT tunnel
	ups := rdUpstreams(t, 2)
	A, B := ups[0], ups[1]
	server, mport := rlServer(t, fmt.Sprintf("  backend: redis\n  redisUrl: %q\n  redisKeyPrefix: %q\n  redisLeaseTtl: 5s\n", srv.URL(0), rdPrefix()))
	re := regexp.QuoteMeta(o.URL)
	insecure := "    tlsInsecureSkipVerify: true\n"
	a := rlTarget{name: "a", regex: re + "/a", ips: []string{A}, extra: insecure}
	b := rlTarget{name: "b", regex: re + "/b", ips: []string{B}, extra: insecure}
	ra := startRLAgent(t, server, mport, a, b)
	hc := &http.Client{Timeout: 10 * time.Second}
	agentURL := ra.proxyURL.String()
	get := func(what string) {
		t.Helper()
		if r := headerDo(hc, agentURL, o.URL+"/b/x"); r.code != 200 || r.body != "via "+hostOf(B) {
			t.Fatalf("%s: %d %q %v", what, r.code, r.body, r.err)
		}
	}
	get("before")
	testenv.Eventually(t, 3*time.Second, func() error {
		if established(t, B) == 0 {
			return errors.New("still waiting for an idle connection kept to B")
		}
		return nil
	})

	srv.Stop()
	ra.write(a) // b removed; a kept, and its pool cannot be updated
	if _, err := ra.a.ReloadFile(context.Background()); err == nil {
		t.Fatal("reload with Redis down applied")
	}
	srv.Start()
	testenv.Eventually(t, 10*time.Second, func() error {
		if r := headerDo(hc, agentURL, o.URL+"/b/x"); r.code != 200 {
			return fmt.Errorf("target b does not serve again once Redis is back: %d %q", r.code, r.body)
		}
		return nil
	})
	get("after Redis came back")
	time.Sleep(200 * time.Millisecond)
	if n := established(t, B); n == 0 {
		t.Errorf("no connection kept to B after a request: the rolled-back target closes its upstream connections after each request")
	}
}
