package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// headerDo sends a header-mode request for target through the agent.
func headerDo(hc *http.Client, agentURL, target string) rlResult {
	r := rlResult{start: time.Now()}
	req, _ := http.NewRequest("GET", agentURL+"/", nil)
	req.Header.Set(proxy.HeaderTarget, target)
	resp, err := hc.Do(req)
	if err != nil {
		r.err, r.end = err, time.Now()
		return r
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.code, r.body, r.err, r.end = resp.StatusCode, string(b), err, time.Now()
	return r
}

// TestReloadClosesDrainedConnections: the agent keeps TLS connections to
// an https origin open per upstream IP. A reload that removes an IP closes
// its idle connections at once and the one carrying a request when that
// request ends; a removed target's connections close the same way.
//
// Not parallel: the garbage collector is off meanwhile, because a
// connection nothing references any more is closed by its finalizer, which
// would hide a leak.
func TestReloadClosesDrainedConnections(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	o := newRLOriginTLS(t, true)
	ups := rdUpstreams(t, 3)
	A, B, C := ups[0], ups[1], ups[2]
	server, mport := rlServer(t, "")
	insecure := "    tlsInsecureSkipVerify: true\n"
	re := regexp.QuoteMeta(o.URL)
	web := func(ips ...string) rlTarget {
		return rlTarget{name: "web", regex: re + "/web", ips: ips, extra: insecure}
	}
	other := rlTarget{name: "other", regex: re + "/other", ips: []string{C}, extra: insecure}
	ra := startRLAgent(t, server, mport, web(A, B), other)
	hc := &http.Client{Timeout: 30 * time.Second}
	agentURL := ra.proxyURL.String()
	// Warm up: connections to both IPs of web, and C of other.
	for range 6 {
		for _, p := range []string{"/web", "/other"} {
			if r := headerDo(hc, agentURL, o.URL+p); r.code != 200 {
				t.Fatalf("warm-up %s: %d %q %v", p, r.code, r.body, r.err)
			}
		}
	}
	for _, u := range []string{A, B, C} {
		if established(t, u) == 0 {
			t.Fatalf("no idle connection kept to %s after the warm-up", u)
		}
	}
	blocked := make(chan rlResult, 1)
	go func() { blocked <- headerDo(&http.Client{}, agentURL, o.URL+"/web/block") }()
	X := <-o.arrived
	removed, kept := A, B
	if X == hostOf(B) {
		removed, kept = B, A
	}
	ra.reload(web(kept), other)
	testenv.Eventually(t, 3*time.Second, func() error {
		if established(t, removed) != 1 {
			return errors.New("still waiting for idle connections to the removed IP closed, the busy one kept")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := established(t, removed); n != 1 {
		t.Fatalf("%d connections to the removed IP while its request is in flight, want 1", n)
	}
	if established(t, kept) == 0 {
		t.Errorf("the kept IP's idle connections were closed by the reload")
	}
	o.unblock()
	if r := <-blocked; r.code != 200 || r.body != "via "+X {
		t.Fatalf("request in flight through the removed IP: %d %q %v", r.code, r.body, r.err)
	}
	testenv.Eventually(t, 3*time.Second, func() error {
		if established(t, removed) != 0 {
			return errors.New("still waiting for the drained connection to the removed IP closed")
		}
		return nil
	})
	if r := headerDo(hc, agentURL, o.URL+"/web"); r.code != 200 || r.body != "via "+hostOf(kept) {
		t.Fatalf("after the drain: %d %q", r.code, r.body)
	}

	// Remove target other while a request of it is in flight.
	go func() { blocked <- headerDo(&http.Client{}, agentURL, o.URL+"/other/block") }()
	<-o.arrived
	res := ra.reload(web(kept))
	if strings.Join(res.Removed, ",") != "other" || res.IPsRemoved != 1 {
		t.Errorf("remove target other: %+v", res)
	}
	if r := headerDo(hc, agentURL, o.URL+"/other"); r.code != 502 || !strings.Contains(r.body, `"error":"no_target"`) {
		t.Errorf("request for the removed target: %d %q, want 502 no_target", r.code, r.body)
	}
	if n := established(t, C); n != 1 {
		t.Errorf("%d connections to the removed target's IP while its request is in flight, want 1", n)
	}
	o.unblock()
	if r := <-blocked; r.code != 200 || r.body != "via "+hostOf(C) {
		t.Fatalf("in-flight request of the removed target: %d %q %v", r.code, r.body, r.err)
	}
	testenv.Eventually(t, 3*time.Second, func() error {
		if established(t, C) != 0 {
			return errors.New("still waiting for the removed target's connection closed once drained")
		}
		return nil
	})
}

func TestReloadTargetsMemory(t *testing.T) {
	t.Parallel()
	server, mport := rlServer(t, "")
	testReloadTargets(t, server, mport)
}

func TestReloadTargetsRedis(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	server, mport := rlServer(t, fmt.Sprintf("  backend: redis\n  redisUrl: %q\n  redisKeyPrefix: %q\n  redisLeaseTtl: 5s\n", srv.URL(0), rdPrefix()))
	testReloadTargets(t, server, mport)
}

// testReloadTargets: targets added and removed at run time while traffic
// flows to a target that stays; the removed target's in-flight request
// finishes, new requests no longer match it; the added one serves through
// its own IP; gauges follow.
func testReloadTargets(t *testing.T, server string, mport int) {
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 3)
	A, B, C := ups[0], ups[1], ups[2]
	re := regexp.QuoteMeta(o.URL)
	a := rlTarget{name: "a", regex: re + "/a", ips: []string{A}}
	b := rlTarget{name: "b", regex: re + "/b", ips: []string{B}}
	c := rlTarget{name: "c", regex: re + "/c", ips: []string{C}}
	ra := startRLAgent(t, server, mport, a, b)
	tr := startTraffic(t, ra.proxyURL, o.URL+"/a/x", 3)
	hc := tr.client(t, ra.proxyURL)
	t0 := time.Now()

	if r := rlDo(hc, o.URL+"/b/x"); r.code != 200 || r.body != "via "+hostOf(B) {
		t.Fatalf("target b before the reload: %d %q %v", r.code, r.body, r.err)
	}
	blocked := make(chan rlResult, 1)
	go func() { blocked <- rlDo(tr.client(t, ra.proxyURL), o.URL+"/b/block") }()
	<-o.arrived

	res := ra.reload(a, c)
	if strings.Join(res.Added, ",") != "c" || strings.Join(res.Removed, ",") != "b" || len(res.Changed) != 0 {
		t.Errorf("reload result %+v; want c added, b removed, nothing changed", res)
	}
	if r := rlDo(hc, o.URL+"/b/x"); r.code != 502 || !strings.Contains(r.body, `"error":"no_target"`) {
		t.Errorf("request for removed target b: %d %q, want 502 no_target", r.code, r.body)
	}
	if r := rlDo(hc, o.URL+"/c/x"); r.code != 200 || r.body != "via "+hostOf(C) {
		t.Errorf("request for added target c: %d %q %v", r.code, r.body, r.err)
	}
	m := ra.scrape()
	if strings.Contains(m, `proxy_hopper_available_ips{target="b"}`) || !strings.Contains(m, `proxy_hopper_available_ips{target="c"}`) {
		t.Errorf("pool gauges after removing b and adding c:\n%s", grepLines(m, "proxy_hopper_available_ips"))
	}
	o.unblock()
	if r := <-blocked; r.code != 200 || r.body != "via "+hostOf(B) {
		t.Errorf("in-flight request of removed target b: %d %q %v", r.code, r.body, r.err)
	}
	// Target b comes back (its name and IP again): it serves again.
	ra.reload(a, b, c)
	if r := rlDo(hc, o.URL+"/b/x"); r.code != 200 || r.body != "via "+hostOf(B) {
		t.Errorf("re-added target b: %d %q %v", r.code, r.body, r.err)
	}
	tr.end()
	via, other := tally(tr.between(t0, time.Now()))
	if len(other) > 0 || via[hostOf(A)] == 0 || len(via) != 1 {
		t.Errorf("traffic of target a across the reloads: served %v, failed %v; want all through A", via, other)
	}
	if n := int(tr.dials.Load()); n != 5 {
		t.Errorf("clients dialled the agent %d times, want 5 (one connection each)", n)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestReloadRejectsInvalid: a config that does not parse or validate is
// rejected with the message validate prints, counted as a failure, and
// the running config keeps serving. A change to a key that needs a restart
// is named in a WARN while the rest of the reload applies.
func TestReloadRejectsInvalid(t *testing.T) {
	t.Parallel()
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 2)
	A, B := ups[0], ups[1]
	server, mport := rlServer(t, "")
	re := regexp.QuoteMeta(o.URL)
	ra := startRLAgent(t, server, mport, rlTarget{name: "web", regex: re, ips: []string{A}})
	tr := startTraffic(t, ra.proxyURL, o.URL+"/x", 2)
	t0 := time.Now()

	for _, bad := range []struct{ name, body string }{
		{"validation", rlConfig(server, rlTarget{name: "web", regex: "(", ips: []string{B}}, rlTarget{name: "web", regex: "x", ips: []string{"h:0"}})},
		{"yaml", "targets: [\n  - {name: web"},
		{"unknown key", rlConfig(server, rlTarget{name: "web", regex: re, ips: []string{B}, extra: "    minRequestIntervall: 1s\n"})},
	} {
		if err := os.WriteFile(ra.path, []byte(bad.body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, lerr := config.Load(ra.path, nil)
		if lerr == nil {
			_, lerr = cfg.Resolve()
		}
		if lerr == nil {
			t.Fatalf("%s: the bad config validates", bad.name)
		}
		want := "config error: " + lerr.Error() // as validate prints it
		_, err := ra.a.ReloadFile(context.Background())
		if err == nil || err.Error() != want {
			t.Errorf("%s: ReloadFile = %v, want %q", bad.name, err, want)
		}
		if logs := ra.logs.String(); !strings.Contains(logs, "config reload rejected") || !strings.Contains(logs, fmt.Sprintf("%q", want)) {
			t.Errorf("%s: no rejection logged with the reason %q:\n%s", bad.name, want, logs)
		}
	}
	t1 := time.Now()
	testenv.Eventually(t, 5*time.Second, servedVia(tr, t1, A, 4))
	if got := ra.metric(`proxy_hopper_config_reloads_total{result="failure"}`); got != 3 {
		t.Errorf("config_reloads_total{failure} = %v, want 3", got)
	}
	via, other := tally(tr.between(t0, time.Now()))
	if len(other) > 0 || len(via) != 1 || via[hostOf(A)] == 0 {
		t.Errorf("traffic while bad configs were rejected: served %v, failed %v; want all through A", via, other)
	}

	// Restart-only keys change next to a target change: WARN, the rest applies.
	ra.server += "  connectTimeout: 5s\n  port: 18080\n"
	res := ra.reload(rlTarget{name: "web", regex: re, ips: []string{B}})
	if got := strings.Join(res.RestartRequired, ","); got != "server.port,server.connectTimeout" {
		t.Errorf("RestartRequired = %q, want server.port,server.connectTimeout", got)
	}
	if logs := ra.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, `keys=server.port,server.connectTimeout`) {
		t.Errorf("no WARN naming the restart-only keys:\n%s", logs)
	}
	t1 = time.Now()
	testenv.Eventually(t, 5*time.Second, servedVia(tr, t1, B, 4))
	via, other = tally(tr.between(t1, time.Now()))
	if len(other) > 0 || len(via) != 1 || via[hostOf(B)] == 0 {
		t.Errorf("traffic after the reload: served %v, failed %v; want all through B", via, other)
	}
	if !strings.Contains(ra.logs.String(), "config reloaded") {
		t.Errorf("no summary line logged")
	}
}

// TestReloadWatchConfig: with server.watchConfig the agent reloads when
// the file is rewritten in place and when a new file is renamed over it
// (as editors and ConfigMaps do); a burst of writes is one reload.
func TestReloadWatchConfig(t *testing.T) {
	t.Parallel()
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 3)
	A, B, C := ups[0], ups[1], ups[2]
	server, mport := rlServer(t, "  watchConfig: true\n")
	re := regexp.QuoteMeta(o.URL)
	tgt := func(ips ...string) rlTarget { return rlTarget{name: "web", regex: re, ips: ips} }
	ra := startRLAgent(t, server, mport, tgt(A))
	tr := startTraffic(t, ra.proxyURL, o.URL+"/x", 2)
	serving := func(want ...string) func() error {
		return func() error {
			ts := ra.a.Targets()
			if len(ts) != 1 || len(ts[0].Upstreams) != len(want) {
				return fmt.Errorf("serving %d target(s), want one with upstreams %v", len(ts), want)
			}
			for _, w := range want {
				if _, ok := ts[0].Upstreams[w]; !ok {
					return fmt.Errorf("target without upstream %s, want %v", w, want)
				}
			}
			return nil
		}
	}
	successes := func() float64 { return ra.metric(`proxy_hopper_config_reloads_total{result="success"}`) }

	// In place, in a burst of writes (the last one wins).
	ra.write(tgt(A, C))
	time.Sleep(20 * time.Millisecond)
	ra.write(tgt(A, B))
	testenv.Eventually(t, 5*time.Second, serving(A, B))
	time.Sleep(600 * time.Millisecond)
	if n := successes(); n != 1 {
		t.Errorf("reloads after a burst of writes: %v, want 1", n)
	}

	// Atomic replace: write a temporary file, rename it over the config.
	tmp := filepath.Join(filepath.Dir(ra.path), ".config.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(rlConfig(server, tgt(C))), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, ra.path); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, serving(C))
	t1 := time.Now()
	time.Sleep(400 * time.Millisecond)
	if n := successes(); n != 2 {
		t.Errorf("reloads after the rename: %v, want 2", n)
	}
	via, other := tally(tr.between(t1, time.Now()))
	if len(other) > 0 || len(via) != 1 || via[hostOf(C)] == 0 {
		t.Errorf("traffic after the rename: served %v, failed %v; want all through C", via, other)
	}
	// A touch that does not change the content reloads nothing.
	now := time.Now()
	if err := os.Chtimes(ra.path, now, now); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if n := successes(); n != 2 {
		t.Errorf("reloads after a touch: %v, want 2", n)
	}
	tr.end()
	if n := int(tr.dials.Load()); n != 2 {
		t.Errorf("clients dialled the agent %d times, want 2", n)
	}
}

// TestReloadIdentity: a target's identity store lives across reloads (its
// policy updated, identities of kept IPs kept, those of removed IPs
// forgotten); turning identity off and on again gives a fresh store.
func TestReloadIdentity(t *testing.T) {
	t.Parallel()
	server, mport := rlServer(t, "")
	id := func(profile string) string {
		return "    identity: {enabled: true, profile: " + profile + "}\n"
	}
	web := func(extra string, ips ...string) rlTarget {
		return rlTarget{name: "web", regex: "x", ips: ips, extra: extra}
	}
	ra := startRLAgent(t, server, mport, web(id("chrome-windows"), "10.9.0.1:1", "10.9.0.2:1"))
	store := ra.a.Targets()[0].Identity
	if store == nil {
		t.Fatal("identity store missing")
	}
	kept := store.Get("10.9.0.1:1")
	store.Get("10.9.0.2:1")
	ra.reload(web(id("firefox-linux"), "10.9.0.1:1"))
	got := ra.a.Targets()[0].Identity
	if got != store {
		t.Fatal("a changed identity policy replaced the store (and its cookie jars)")
	}
	if got.Config().Profile != "firefox-linux" {
		t.Errorf("profile after reload: %q", got.Config().Profile)
	}
	if got.Get("10.9.0.1:1") != kept || got.Len() != 1 {
		t.Errorf("identities after removing 10.9.0.2: kept one replaced, or %d held (want 1)", got.Len())
	}
	ra.reload(web("", "10.9.0.1:1"))
	if ra.a.Targets()[0].Identity != nil {
		t.Error("identity still on after the reload turned it off")
	}
	ra.reload(web(id("safari-macos"), "10.9.0.1:1"))
	if s := ra.a.Targets()[0].Identity; s == nil || s == store || s.Config().Profile != "safari-macos" {
		t.Errorf("identity turned on again: %v", s)
	}
}

// TestReloadBackendDown: a reload that the backend cannot apply (Redis
// unreachable) is rejected and leaves the running targets as they were;
// once Redis is back the same reload applies.
func TestReloadBackendDown(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 2)
	A, B := ups[0], ups[1]
	server, mport := rlServer(t, fmt.Sprintf("  backend: redis\n  redisUrl: %q\n  redisKeyPrefix: %q\n  redisLeaseTtl: 5s\n", srv.URL(0), rdPrefix()))
	re := regexp.QuoteMeta(o.URL)
	a := rlTarget{name: "a", regex: re + "/a", ips: []string{A}}
	ra := startRLAgent(t, server, mport, a)
	hc := (&traffic{}).client(t, ra.proxyURL)
	if r := rlDo(hc, o.URL+"/a/x"); r.code != 200 {
		t.Fatalf("before: %d %q %v", r.code, r.body, r.err)
	}
	before := ra.a.Targets()
	srv.Stop()
	for _, next := range [][]rlTarget{
		{a, {name: "c", regex: re + "/c", ips: []string{B}}}, // a target to add
		{{name: "a", regex: re + "/a", ips: []string{B}}},    // a kept target's IPs
	} {
		ra.write(next...)
		if _, err := ra.a.ReloadFile(context.Background()); err == nil {
			t.Fatalf("reload with Redis down applied")
		}
		if got := ra.a.Targets(); len(got) != 1 || got[0] != before[0] {
			t.Fatalf("targets after a failed reload: %v, want the running ones", got)
		}
	}
	if got := ra.metric(`proxy_hopper_config_reloads_total{result="failure"}`); got != 2 {
		t.Errorf("config_reloads_total{failure} = %v, want 2", got)
	}
	srv.Start()
	testenv.Eventually(t, 10*time.Second, func() error {
		if _, err := ra.a.ReloadFile(context.Background()); err != nil {
			return fmt.Errorf("reload after Redis came back: %w", err)
		}
		return nil
	})
	if r := rlDo(hc, o.URL+"/a/x"); r.code != 200 || r.body != "via "+hostOf(B) {
		t.Errorf("after Redis came back and the reload applied: %d %q %v", r.code, r.body, r.err)
	}
}

// TestReloadWatchSymlinkSwap: a config mounted as Kubernetes mounts a
// ConfigMap (config.yaml -> ..data/config.yaml, ..data -> a versioned
// directory swapped by renaming a new symlink over ..data) is reloaded
// when the swap happens.
func TestReloadWatchSymlinkSwap(t *testing.T) {
	t.Parallel()
	o := newRLOrigin(t)
	ups := rdUpstreams(t, 2)
	A, B := ups[0], ups[1]
	server, mport := rlServer(t, "  watchConfig: true\n")
	re := regexp.QuoteMeta(o.URL)
	tgt := func(ip string) rlTarget { return rlTarget{name: "web", regex: re, ips: []string{ip}} }
	dir := t.TempDir()
	version := func(name, ip string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "config.yaml"), []byte(rlConfig(server, tgt(ip))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", A)
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/config.yaml", filepath.Join(dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	ra := &rlAgent{t: t, server: server, logs: &syncBuf{}, metricsPort: mport, path: filepath.Join(dir, "config.yaml")}
	ra.start()
	hc := (&traffic{}).client(t, ra.proxyURL)
	if r := rlDo(hc, o.URL+"/x"); r.body != "via "+hostOf(A) {
		t.Fatalf("before the swap: %d %q %v", r.code, r.body, r.err)
	}
	version("..v2", B)
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if rlDo(hc, o.URL+"/x").body != "via "+hostOf(B) {
			return errors.New("still waiting for the swapped ConfigMap applied")
		}
		return nil
	})
}

// servedVia is a condition for testenv.Eventually: at least n requests
// started since t0 were served through upstream ip.
func servedVia(tr *traffic, t0 time.Time, ip string, n int) func() error {
	return func() error {
		if via, other := tally(tr.between(t0, time.Now())); via[hostOf(ip)] < n {
			return fmt.Errorf("since %s: served %v, failed %v; want %d through %s", t0.Format(time.TimeOnly), via, other, n, ip)
		}
		return nil
	}
}
