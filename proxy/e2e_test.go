package proxy

// End-to-end tests: real sockets, real tinyproxy upstreams, net/http and
// curl clients, httptest origins.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// --- rotation, cooldown, queueing -----------------------------------------

func TestE2ERotationEqualShare(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	const n, rounds = 4, 3
	e := newEnv(t, envOptions{upstreams: n})
	c := e.headerClient()
	for i := 0; i < n*rounds; i++ {
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, fmt.Sprintf("/r/%d", i), nil))
		if resp.StatusCode != 200 || body != fmt.Sprintf("GET /r/%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	for _, up := range e.upstream {
		if got := len(up.Requests(t)); got != rounds {
			t.Errorf("upstream %s served %d requests, want %d: %v", up.Addr, got, rounds, up.Requests(t))
		}
	}
	// Strict round robin: the IP free longest goes next.
	for i, a := range e.attemptsN(t, n*rounds) {
		if want := e.upstream[i%n].Addr; a.Addr != want || !a.OK {
			t.Errorf("attempt %d went to %s (ok=%v), want %s", i, a.Addr, a.OK, want)
		}
	}
}

func TestE2ERotationConcurrent(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	const n, per = 3, 8
	e := newEnv(t, envOptions{upstreams: n, quiet: true})
	c := e.headerClient()
	var wg sync.WaitGroup
	errs := make(chan error, n*per)
	for i := 0; i < n*per; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Do(e.newReq(t, "GET", o.URL, "/c", nil))
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := 0
	for _, up := range e.upstream {
		got := len(up.Requests(t))
		total += got
		if got == 0 {
			t.Errorf("upstream %s got no request", up.Addr)
		}
	}
	if total != n*per {
		t.Errorf("upstreams served %d requests, want %d", total, n*per)
	}
}

func TestE2ECooldownHonoured(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	const interval = 300 * time.Millisecond
	e := newEnv(t, envOptions{upstreams: 1, cfg: pool.Config{MinRequestInterval: interval, MaxQueueWait: 5 * time.Second}})
	c := e.headerClient()
	t0 := time.Now()
	if resp, _ := do(t, c, e.newReq(t, "GET", o.URL, "/1", nil)); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	t1 := time.Now()
	if resp, _ := do(t, c, e.newReq(t, "GET", o.URL, "/2", nil)); resp.StatusCode != 200 {
		t.Fatalf("second: %d", resp.StatusCode)
	}
	t2 := time.Now()
	// The IP is released after the first response is written, so the second
	// cannot be served before interval has passed since the first was sent;
	// measured from the first answer, allow the release's scheduling latency.
	if d := t2.Sub(t0); d < interval {
		t.Errorf("two requests through one IP took %s, want >= %s", d, interval)
	}
	if d := t2.Sub(t1); d < interval-10*time.Millisecond {
		t.Errorf("second request waited %s, want >= %s", d, interval)
	}
	if rs := e.requestsN(t, 2); len(rs) != 2 || rs[1].QueueWait < interval/2 {
		t.Errorf("request events %+v: second should report its queue wait", rs)
	}
}

func TestE2EQueueWaitExceeded(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, cfg: pool.Config{MinRequestInterval: 2 * time.Second, MaxQueueWait: 100 * time.Millisecond}})
	c := e.headerClient()
	if resp, _ := do(t, c, e.newReq(t, "GET", o.URL, "/1", nil)); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	start := time.Now()
	resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/2", nil))
	d := time.Since(start)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second: %d %q, want 503", resp.StatusCode, body)
	}
	doc := decodeError(t, resp, body)
	if doc.Error != "no_ip_available" || doc.Target != "t1" {
		t.Errorf("error body %q: want error no_ip_available, target t1", body)
	}
	if d < 100*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("503 after %s, want after maxQueueWait (100ms) and before the cooldown ends", d)
	}
	if len(o.requests()) != 1 {
		t.Errorf("origin saw %d requests, want 1", len(o.requests()))
	}
}

// --- failures, retries, quarantine ----------------------------------------

func TestE2EDeadUpstreamRetriedAndQuarantined(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	dead := deadAddr(t)
	e := newEnv(t, envOptions{leading: []string{dead}, upstreams: 1, retries: 1,
		cfg: pool.Config{FailuresUntilQuarantine: 2}})
	live := e.upstream[0].Addr
	c := e.headerClient()
	for i := 0; i < 2; i++ { // pool order: dead, live; dead fails each time
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/x", nil))
		if resp.StatusCode != 200 || body != "GET /x" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	log := e.attemptsN(t, 4)
	if len(log) != 4 {
		t.Fatalf("attempts %+v, want 4", log)
	}
	for i, a := range log {
		want := []string{dead, live}[i%2]
		if a.Addr != want {
			t.Errorf("attempt %d via %s, want %s", i, a.Addr, want)
		}
		if a.Addr == dead && (a.OK || a.Reason != "connect_refused") {
			t.Errorf("attempt %d on dead IP: ok=%v reason=%q, want connect_refused", i, a.OK, a.Reason)
		}
	}
	snap, err := e.pool().Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snap {
		switch s.Addr {
		case dead:
			if s.State != pool.StateQuarantined {
				t.Errorf("dead IP is %s, want %s", s.State, pool.StateQuarantined)
			}
		case live:
			if s.State == pool.StateQuarantined || s.Failures != 0 {
				t.Errorf("live IP is %s with %d failures", s.State, s.Failures)
			}
		}
	}
	// Quarantined: the next request goes straight to the live IP.
	if resp, _ := do(t, c, e.newReq(t, "GET", o.URL, "/y", nil)); resp.StatusCode != 200 {
		t.Fatalf("after quarantine: %d", resp.StatusCode)
	}
	if log := e.attemptsN(t, 5); len(log) != 5 || log[4].Addr != live {
		t.Errorf("after quarantine attempts %+v, want one more via %s", log[4:], live)
	}
}

func TestE2EOrigin429RetriedOnAnotherIP(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, "slow down")
			return
		}
		io.WriteString(w, "ok")
	})
	e := newEnv(t, envOptions{upstreams: 2, retries: 2})
	resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q, want 200 ok", resp.StatusCode, body)
	}
	if hits.Load() != 2 {
		t.Errorf("origin hit %d times, want 2", hits.Load())
	}
	for _, up := range e.upstream {
		if n := len(up.Requests(t)); n != 1 {
			t.Errorf("upstream %s served %d requests, want 1 each", up.Addr, n)
		}
	}
	log := e.attemptsN(t, 2)
	if len(log) != 2 || log[0].Reason != "status_429" || log[0].Status != 429 || !log[1].OK || log[0].Addr == log[1].Addr {
		t.Errorf("attempts %+v: want status_429 then success on another IP", log)
	}
	if rs := e.requestsN(t, 1); len(rs) != 1 || rs[0].Retries != 1 || rs[0].Outcome != OutcomeSuccess {
		t.Errorf("request events %+v", rs)
	}
}

func TestE2EOriginAlways429(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(int(n)))
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprintf(w, "slow down %d", n)
	})

	t.Run("retries exhausted", func(t *testing.T) {
		hits.Store(0)
		e := newEnv(t, envOptions{upstreams: 2, retries: 1})
		resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
		if resp.StatusCode != 429 || body != "slow down 2" || resp.Header.Get("Retry-After") != "2" {
			t.Fatalf("got %d %q Retry-After=%q, want the last 429 (slow down 2)", resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
		if hits.Load() != 2 {
			t.Errorf("origin hit %d times, want 2", hits.Load())
		}
		if rs := e.requestsN(t, 1); len(rs) != 1 || rs[0].Outcome != OutcomeRateLimited {
			t.Errorf("request events %+v, want rate_limited", rs)
		}
	})

	t.Run("no IP for the retry", func(t *testing.T) {
		// One IP cooling down after the 429: the retry finds no IP in
		// time, and the client gets the 429 that was held back.
		hits.Store(0)
		e := newEnv(t, envOptions{upstreams: 1, retries: 3,
			cfg: pool.Config{MinRequestInterval: 5 * time.Second, MaxQueueWait: 50 * time.Millisecond}})
		resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
		if resp.StatusCode != 429 || body != "slow down 1" || resp.Header.Get("Content-Type") != "text/plain" {
			t.Fatalf("got %d %q, want the held 429 (slow down 1)", resp.StatusCode, body)
		}
		if hits.Load() != 1 {
			t.Errorf("origin hit %d times, want 1", hits.Load())
		}
	})

	t.Run("retry fails at connect", func(t *testing.T) {
		// 429 through the live IP, then the retry's IP is dead: the
		// client gets the 429, not a 502.
		hits.Store(0)
		e := newEnv(t, envOptions{upstreams: 1, extraAddrs: []string{deadAddr(t)}, retries: 1})
		resp, body := do(t, e.headerClient(), e.newReq(t, "GET", o.URL, "/", nil))
		if resp.StatusCode != 429 || body != "slow down 1" {
			t.Fatalf("got %d %q, want the held 429 (slow down 1)", resp.StatusCode, body)
		}
	})
}

func TestE2EOrigin500And404NotRetried(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/500":
			http.Error(w, "boom", 500)
		case "/404":
			http.Error(w, "nope", 404)
		}
	})
	e := newEnv(t, envOptions{upstreams: 2, retries: 3})
	c := e.headerClient()
	for _, code := range []int{500, 404} {
		hits.Store(0)
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/"+strconv.Itoa(code), nil))
		want := map[int]string{500: "boom\n", 404: "nope\n"}[code]
		if resp.StatusCode != code || body != want {
			t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, code, want)
		}
		if hits.Load() != 1 {
			t.Errorf("%d: origin hit %d times, want 1", code, hits.Load())
		}
	}
	snap, _ := e.pool().Snapshot(context.Background())
	for _, s := range snap {
		if s.Failures != 0 {
			t.Errorf("%s has %d failures: origin 500/404 must not count against the IP", s.Addr, s.Failures)
		}
	}
}

func TestE2EAllAttemptsFail502(t *testing.T) {
	t.Parallel()
	d1, d2 := deadAddr(t), deadAddr(t)
	e := newEnv(t, envOptions{leading: []string{d1, d2}, retries: 1})
	resp, body := do(t, e.headerClient(), e.newReq(t, "GET", "http://example.invalid", "/p?q=1", nil))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
	}
	doc := decodeError(t, resp, body)
	if doc.Error != "connection_error" || doc.Target != "t1" || doc.URL != "http://example.invalid/p?q=1" {
		t.Errorf("error body %s", body)
	}
	if len(doc.Attempts) != 2 {
		t.Fatalf("attempts %+v, want 2", doc.Attempts)
	}
	for i, a := range doc.Attempts {
		if a.IP != []string{d1, d2}[i] || a.Reason != "connect_refused" {
			t.Errorf("attempt %d = %+v, want {%s connect_refused}", i, a, []string{d1, d2}[i])
		}
	}
	if !strings.Contains(body, `"ip":`) || !strings.Contains(body, `"reason":`) {
		t.Errorf("attempt records must use the keys ip and reason: %s", body)
	}
}

func TestE2ENoTargetMatched(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, regex: `^https?://allowed\.example(:\d+)?/`})
	c := e.headerClient()
	resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/x?y=1", nil))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("header mode: %d %q, want 502", resp.StatusCode, body)
	}
	doc := decodeError(t, resp, body)
	if doc.Error != "no_target" || doc.URL != o.URL+"/x?y=1" || !strings.Contains(doc.Detail, o.URL+"/x?y=1") {
		t.Errorf("header mode error body %s: want no_target naming %s", body, o.URL+"/x?y=1")
	}
	// Explicit proxy (absolute-form) and CONNECT get the same answer.
	resp, err := e.proxyClient().Get(o.URL + "/abs")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(b), o.URL+"/abs") {
		t.Errorf("absolute form: %d %s", resp.StatusCode, b)
	}
	out := rawRequest(t, e.addr, "CONNECT "+o.Listener.Addr().String()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if !strings.HasPrefix(statusLine(out), "HTTP/1.1 502") || !strings.Contains(out, o.Listener.Addr().String()) {
		t.Errorf("CONNECT: %q", out)
	}
	if len(o.requests()) != 0 || len(e.upstream[0].Requests(t)) != 0 {
		t.Error("an unmatched request reached the upstream")
	}
}

// TestE2ERetriesHeader: X-Proxy-Hopper-Retries sets a request's retries,
// up to max(numRetries, maxClientRetries): by default it can only lower
// them (one request asking for 100 retries used to quarantine every IP).
func TestE2ERetriesHeader(t *testing.T) {
	t.Parallel()
	dead := []string{deadAddr(t), deadAddr(t), deadAddr(t)}
	for _, tg := range []struct {
		maxClient int
		cases     []struct {
			value    string
			attempts int
		}
	}{
		{0, []struct {
			value    string
			attempts int
		}{
			{"0", 1}, {"1", 2}, {"2", 3}, {"5", 3}, {"100", 3}, // capped at numRetries
			{"abc", 3}, {"-1", 3}, {"101", 3}, {"1.5", 3}, {"0x1", 3}, {"", 3}, // invalid: the target's 2
		}},
		{4, []struct {
			value    string
			attempts int
		}{
			{"0", 1}, {"3", 4}, {"4", 5}, {"5", 5}, {"100", 5}, {"", 3}, // IPs come back at once and are tried again
		}},
	} {
		e := newEnv(t, envOptions{leading: dead, retries: 2, maxClientRetries: tg.maxClient, cfg: pool.Config{FailuresUntilQuarantine: 1000}})
		c := e.headerClient()
		for _, tc := range tg.cases {
			req := e.newReq(t, "GET", "http://example.invalid", "/", nil)
			if tc.value != "" {
				req.Header.Set(HeaderRetries, tc.value)
			}
			resp, body := do(t, c, req)
			if resp.StatusCode != 502 {
				t.Fatalf("max %d, %q: %d %s", tg.maxClient, tc.value, resp.StatusCode, body)
			}
			doc := decodeError(t, resp, body)
			want := tc.attempts
			if len(doc.Attempts) != want {
				t.Errorf("maxClientRetries %d, %s %q: %d attempts, want %d", tg.maxClient, HeaderRetries, tc.value, len(doc.Attempts), want)
			}
			if doc.Allowed == nil || *doc.Allowed != want-1 {
				t.Errorf("maxClientRetries %d, %s %q: retries_allowed %v, want %d", tg.maxClient, HeaderRetries, tc.value, doc.Allowed, want-1)
			}
		}
	}
}

func TestE2EControlHeadersStripped(t *testing.T) {
	t.Parallel()
	type seen struct {
		header http.Header
		body   string
		method string
		uri    string
	}
	got := make(chan seen, 4)
	h := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Header.Clone(), string(b), r.Method, r.URL.RequestURI()}
		w.Header().Set("X-Origin", "yes")
		io.WriteString(w, "done")
	}
	plain, secure := newOrigin(t, false, h), newOrigin(t, true, h)
	e := newEnv(t, envOptions{upstreams: 1, tls: caOf(secure)})

	for _, o := range []*origin{plain, secure} {
		req := e.newReq(t, "POST", o.URL, "/submit?a=1", strings.NewReader("hello body"))
		req.Header.Set("Content-Type", "text/plain")
		req.Header.Set("X-Custom", "v1")
		req.Header.Add("X-Multi", "a")
		req.Header.Add("X-Multi", "b")
		req.Header.Set("Authorization", "Bearer origin-token")
		req.Header.Set(HeaderRetries, "1")
		req.Header.Set(HeaderTag, "team-a")
		req.Header.Set("X-Proxy-Hopper-Unknown", "z")
		resp, body := do(t, e.headerClient(), req)
		if resp.StatusCode != 200 || body != "done" || resp.Header.Get("X-Origin") != "yes" {
			t.Fatalf("%s: got %d %q", o.URL, resp.StatusCode, body)
		}
		s := <-got
		if s.method != "POST" || s.uri != "/submit?a=1" || s.body != "hello body" {
			t.Errorf("%s: origin saw %s %s body %q", o.URL, s.method, s.uri, s.body)
		}
		for k := range s.header {
			if strings.HasPrefix(strings.ToLower(k), "x-proxy-hopper-") {
				t.Errorf("%s: control header %s reached the origin", o.URL, k)
			}
		}
		for k, want := range map[string]string{"Content-Type": "text/plain", "X-Custom": "v1", "Authorization": "Bearer origin-token", "Content-Length": "10"} {
			if v := s.header.Get(k); v != want {
				t.Errorf("%s: origin saw %s: %q, want %q", o.URL, k, v, want)
			}
		}
		// tinyproxy 1.11 keeps only the first of repeated request headers,
		// so repeated headers are checked where it only tunnels.
		if v := s.header.Values("X-Multi"); o == secure && (len(v) != 2 || v[0] != "a" || v[1] != "b") {
			t.Errorf("%s: origin saw X-Multi %q", o.URL, v)
		}
	}
	if rs := e.requestsN(t, 2); len(rs) != 2 || rs[0].Tag != "team-a" || rs[0].Mode != "header" {
		t.Errorf("request events %+v, want tag team-a", rs)
	}

	// Raw: lower-case control headers, hop-by-hop headers and a header
	// named by Connection are dropped too.
	out := rawRequest(t, e.addr, "GET /raw HTTP/1.1\r\nHost: agent\r\nx-proxy-hopper-target: "+plain.URL+
		"\r\nx-proxy-hopper-tag: t\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Keep: 2\r\n\r\n")
	if !strings.HasPrefix(statusLine(out), "HTTP/1.1 200") {
		t.Fatalf("raw: %q", out)
	}
	s := <-got
	for _, k := range []string{"X-Proxy-Hopper-Target", "X-Proxy-Hopper-Tag", "X-Hop", "Keep-Alive", "Te", "Proxy-Authorization"} {
		if v, ok := s.header[k]; ok {
			t.Errorf("%s: %q reached the origin", k, v)
		}
	}
	if s.header.Get("X-Keep") != "2" {
		t.Errorf("X-Keep lost: %v", s.header)
	}
}

// --- CONNECT ----------------------------------------------------------------

func curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := testenv.LookPath(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, args...)...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"} // no *_proxy from the environment
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("curl %v: %v: %s", args, err, errb.String())
	}
	return out.String(), nil
}

func TestE2ECurlConnect(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true, nil)
	plain := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 2, tls: caOf(o)})
	ca := writeCA(t, o)
	proxy := "http://" + e.addr

	for i := 0; i < 2; i++ {
		out, err := curl(t, "-x", proxy, "--cacert", ca, o.URL+"/via-curl?i="+strconv.Itoa(i))
		if err != nil || out != "GET /via-curl?i="+strconv.Itoa(i) {
			t.Fatalf("curl https via CONNECT: %q %v", out, err)
		}
	}
	// Each tunnel left through a different IP.
	for _, up := range e.upstream {
		reqs := up.Requests(t)
		if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "CONNECT ") {
			t.Errorf("upstream %s: %v, want one CONNECT", up.Addr, reqs)
		}
	}
	// curl in the other modes: explicit http proxy, forced tunnel, header mode.
	if out, err := curl(t, "-x", proxy, plain.URL+"/abs"); err != nil || out != "GET /abs" {
		t.Errorf("curl absolute-form: %q %v", out, err)
	}
	if out, err := curl(t, "-x", proxy, "--proxytunnel", plain.URL+"/tunnelled"); err != nil || out != "GET /tunnelled" {
		t.Errorf("curl --proxytunnel to http origin: %q %v", out, err)
	}
	if out, err := curl(t, "-H", HeaderTarget+": "+o.URL+"/base", proxy+"/v1/x?q=1"); err != nil || out != "GET /base/v1/x?q=1" {
		t.Errorf("curl header mode to https: %q %v", out, err)
	}
	if out, err := curl(t, "-H", HeaderTarget+": "+plain.URL, "--data-binary", "abc", proxy+"/post"); err != nil || out != "POST /post" {
		t.Errorf("curl header mode POST: %q %v", out, err)
	}
}

func TestE2EConnectRetriedOnDeadUpstream(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true, nil)
	dead := deadAddr(t)
	e := newEnv(t, envOptions{leading: []string{dead}, upstreams: 1, retries: 1})
	out, err := curl(t, "-x", "http://"+e.addr, "--cacert", writeCA(t, o), o.URL+"/t")
	if err != nil || out != "GET /t" {
		t.Fatalf("curl: %q %v", out, err)
	}
	log := e.attemptsN(t, 2) // the success is reported when the tunnel ends
	if log[0].Addr != dead || log[0].OK || log[0].Reason != "connect_refused" || log[1].Addr != e.upstream[0].Addr || !log[1].OK {
		t.Errorf("attempts %+v: want connect_refused on %s then success", log, dead)
	}
	if rs := e.requestsN(t, 1); len(rs) != 1 || rs[0].Mode != "connect" || rs[0].Retries != 1 {
		t.Errorf("request events %+v", rs)
	}

	// No live IP left to try: 502 with the attempts.
	e2 := newEnv(t, envOptions{leading: []string{deadAddr(t)}, retries: 0})
	resp := rawRequest(t, e2.addr, "CONNECT "+o.Listener.Addr().String()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	if !strings.HasPrefix(statusLine(resp), "HTTP/1.1 502") || !strings.Contains(resp, `"reason":"connect_refused"`) {
		t.Errorf("CONNECT through a dead IP: %q", resp)
	}
}

// tinyproxy 1.11 closes both directions when either side sends EOF, so the
// half-close tests run against halfCloseUpstream.
func TestE2EConnectHalfClose(t *testing.T) {
	t.Parallel()
	t.Run("client closes first", func(t *testing.T) {
		t.Parallel()
		addr := tcpOrigin(t, func(c *net.TCPConn) {
			b, _ := io.ReadAll(c) // until the client's EOF
			fmt.Fprintf(c, "got %d bytes: %s", len(b), b)
		})
		e := newEnv(t, envOptions{leading: []string{halfCloseUpstream(t, "127.0.0.6")}})
		c, br := e.dialConnect(t, addr)
		io.WriteString(c, "hello")
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(br)
		if err != nil || string(b) != "got 5 bytes: hello" {
			t.Errorf("after CloseWrite read %q, %v; want the origin's answer", b, err)
		}
	})
	t.Run("origin closes first", func(t *testing.T) {
		t.Parallel()
		late := make(chan string, 1)
		addr := tcpOrigin(t, func(c *net.TCPConn) {
			io.WriteString(c, "banner")
			c.CloseWrite()
			b, _ := io.ReadAll(c)
			late <- string(b)
		})
		e := newEnv(t, envOptions{leading: []string{halfCloseUpstream(t, "127.0.0.6")}})
		c, br := e.dialConnect(t, addr)
		b, err := io.ReadAll(br)
		if err != nil || string(b) != "banner" {
			t.Fatalf("read %q, %v; want banner then EOF", b, err)
		}
		io.WriteString(c, "still talking")
		c.CloseWrite()
		select {
		case s := <-late:
			if s != "still talking" {
				t.Errorf("origin read %q after its CloseWrite", s)
			}
		case <-time.After(5 * time.Second):
			t.Error("origin never got the client's bytes after its own CloseWrite")
		}
	})
	t.Run("tinyproxy tunnel echoes", func(t *testing.T) {
		t.Parallel()
		addr := tcpOrigin(t, func(c *net.TCPConn) {
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				io.WriteString(c, strings.ToUpper(line))
			}
		})
		e := newEnv(t, envOptions{upstreams: 1})
		c, br := e.dialConnect(t, addr)
		for _, w := range []string{"one\n", "two\n", "three\n"} {
			io.WriteString(c, w)
			got, err := br.ReadString('\n')
			if err != nil || got != strings.ToUpper(w) {
				t.Fatalf("echo %q: %q %v", w, got, err)
			}
		}
	})
}

// --- header mode ------------------------------------------------------------

func TestE2EHeaderModeOrigins(t *testing.T) {
	t.Parallel()
	tlsO := newOrigin(t, true, nil)
	plain := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 2, tls: caOf(tlsO)})
	c := e.headerClient()
	for _, tc := range []struct{ base, path, want string }{
		{plain.URL, "/v1/x?q=1", "GET /v1/x?q=1"},
		{plain.URL + "/base", "/v1/x?q=1", "GET /base/v1/x?q=1"},
		{plain.URL + "/base/", "/v1/x", "GET /base/v1/x"},
		{plain.URL + "/base?k=v", "/v1/x?q=1", "GET /base/v1/x?k=v&q=1"},
		{plain.URL + "/base?k=v", "/v1/x", "GET /base/v1/x?k=v"},
		{plain.URL + "/a%2Fb", "/c%20d", "GET /a%2Fb/c%20d"},
		{tlsO.URL, "/secure?a=b", "GET /secure?a=b"},
		{tlsO.URL + "/base", "/v1/x?q=1", "GET /base/v1/x?q=1"},
		{strings.Replace(tlsO.URL, "https://", "HTTPS://", 1) + "/up", "/x", "GET /up/x"},
	} {
		resp, body := do(t, c, e.newReq(t, "GET", tc.base, tc.path, nil))
		if resp.StatusCode != 200 || body != tc.want {
			t.Errorf("%s + %s: %d %q, want %q", tc.base, tc.path, resp.StatusCode, body, tc.want)
		}
	}
	// A target that does not trust the origin's certificate (system roots)
	// fails on every IP with origin_certificate.
	e2 := newEnv(t, envOptions{upstreams: 1, retries: 1, cfg: pool.Config{FailuresUntilQuarantine: 5}})
	before := len(tlsO.requests())
	resp, body := do(t, e2.headerClient(), e2.newReq(t, "GET", tlsO.URL, "/", nil))
	if resp.StatusCode != 502 || strings.Count(body, `"reason":"`+ReasonOriginCertificate+`"`) != 2 {
		t.Errorf("untrusted origin: %d %s", resp.StatusCode, body)
	}
	if len(tlsO.requests()) != before {
		t.Error("request sent to an untrusted origin")
	}
}

func TestE2EPercentEncodedCRLFIsNotInjected(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1})
	out := rawRequest(t, e.addr, "GET /a%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: a\r\n"+HeaderTarget+": "+o.URL+
		"/b%0D%0AX-Other:%202\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(statusLine(out), "HTTP/1.1 200") {
		t.Fatalf("got %q", out)
	}
	reqs := o.requests()
	if len(reqs) != 1 {
		t.Fatalf("origin saw %d requests", len(reqs))
	}
	if reqs[0].Header.Get("X-Injected") != "" || reqs[0].Header.Get("X-Other") != "" {
		t.Errorf("header injected through an encoded CRLF: %v", reqs[0].Header)
	}
	if want := "/b\r\nX-Other: 2/a\r\nX-Injected: 1"; reqs[0].URL.Path != want {
		t.Errorf("origin path %q, want %q", reqs[0].URL.Path, want)
	}
}

// --- connections --------------------------------------------------------------

func TestE2EClientKeepAlive(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	const n = 3
	e := newEnv(t, envOptions{upstreams: n})
	c := e.headerClient()
	for i := 0; i < 2*n; i++ {
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/k"+strconv.Itoa(i), nil))
		if resp.StatusCode != 200 || body != "GET /k"+strconv.Itoa(i) || resp.Close {
			t.Fatalf("request %d: %d %q close=%v", i, resp.StatusCode, body, resp.Close)
		}
	}
	if got := e.accepted.Load(); got != 1 {
		t.Errorf("agent accepted %d connections for %d sequential requests, want 1", got, 2*n)
	}
	for _, up := range e.upstream {
		if got := len(up.Requests(t)); got != 2 {
			t.Errorf("upstream %s served %d requests, want 2 (rotation on one client connection)", up.Addr, got)
		}
	}

	// Pipelined: three requests in one write, answered in order on one connection.
	before := e.accepted.Load()
	cn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	cn.SetDeadline(time.Now().Add(10 * time.Second))
	var raw strings.Builder
	for i := 0; i < 3; i++ {
		fmt.Fprintf(&raw, "GET /p%d HTTP/1.1\r\nHost: a\r\n%s: %s\r\n", i, HeaderTarget, o.URL)
		if i == 2 {
			raw.WriteString("Connection: close\r\n")
		}
		raw.WriteString("\r\n")
	}
	io.WriteString(cn, raw.String())
	br := bufio.NewReader(cn)
	for i := 0; i < 3; i++ {
		resp, body := readRawResponse(t, br, "GET")
		if resp.StatusCode != 200 || body != fmt.Sprintf("GET /p%d", i) {
			t.Errorf("pipelined %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after Connection: close: %v, want EOF", err)
	}
	if got := e.accepted.Load() - before; got != 1 {
		t.Errorf("pipelined requests used %d connections", got)
	}
	for _, up := range e.upstream {
		if got := len(up.Requests(t)); got != 3 {
			t.Errorf("upstream %s served %d requests in all, want 3", up.Addr, got)
		}
	}
}

func TestE2EHTTP10Client(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part1 ")
		w.(http.Flusher).Flush() // chunked from the origin
		io.WriteString(w, "part2")
	})
	e := newEnv(t, envOptions{upstreams: 1})
	out := rawRequest(t, e.addr, "GET /old HTTP/1.0\r\n"+HeaderTarget+": "+o.URL+"\r\n\r\n")
	head, body, _ := strings.Cut(out, "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.0 200") || strings.Contains(strings.ToLower(head), "transfer-encoding") || body != "part1 part2" {
		t.Errorf("HTTP/1.0 client got %q", out)
	}
}

// --- request bodies -----------------------------------------------------------

// bodyOrigin answers 503 to the first `fail` requests, then 200 with the
// size and hash of the body it read; it records every body.
type bodyOrigin struct {
	*origin
	fail   int32
	hits   atomic.Int32
	mu     sync.Mutex
	bodies [][]byte
}

func newBodyOrigin(t *testing.T, fail int32) *bodyOrigin {
	bo := &bodyOrigin{fail: fail}
	bo.origin = newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		bo.mu.Lock()
		bo.bodies = append(bo.bodies, b)
		bo.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		if bo.hits.Add(1) <= bo.fail {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%d %s", len(b), digest(b))
	})
	return bo
}

func (bo *bodyOrigin) seen() [][]byte {
	bo.mu.Lock()
	defer bo.mu.Unlock()
	return append([][]byte(nil), bo.bodies...)
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

func TestE2ERequestBodyReplayedOnRetry(t *testing.T) {
	t.Parallel()
	bo := newBodyOrigin(t, 1)
	e := newEnv(t, envOptions{upstreams: 2, retries: 1})
	body := payload(10 << 10)
	resp, got := do(t, e.headerClient(), e.newReq(t, "POST", bo.URL, "/up", bytes.NewReader(body)))
	if want := fmt.Sprintf("%d %s", len(body), digest(body)); resp.StatusCode != 200 || got != want {
		t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, got, want)
	}
	seen := bo.seen()
	if len(seen) != 2 || !bytes.Equal(seen[0], body) || !bytes.Equal(seen[1], body) {
		t.Errorf("origin saw %d bodies, want the same 10 KiB twice", len(seen))
	}
}

func TestE2ERequestBodyChunkedReplayed(t *testing.T) {
	t.Parallel()
	bo := newBodyOrigin(t, 1)
	e := newEnv(t, envOptions{upstreams: 2, retries: 1})
	body := payload(10 << 10)
	// io.MultiReader hides the length: net/http sends it chunked.
	req := e.newReq(t, "POST", bo.URL, "/chunked", io.MultiReader(bytes.NewReader(body)))
	resp, got := do(t, e.headerClient(), req)
	if want := fmt.Sprintf("%d %s", len(body), digest(body)); resp.StatusCode != 200 || got != want {
		t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, got, want)
	}
	if seen := bo.seen(); len(seen) != 2 || !bytes.Equal(seen[1], body) {
		t.Errorf("origin saw %d bodies", len(seen))
	}
}

func TestE2ERequestBodyLargeStreamsOnce(t *testing.T) {
	t.Parallel()
	body := payload(10 << 10)
	opts := Options{RetryBufferBytes: 1 << 10}

	t.Run("not retried after an origin answer", func(t *testing.T) {
		t.Parallel()
		bo := newBodyOrigin(t, 1)
		e := newEnv(t, envOptions{upstreams: 2, retries: 3, opts: opts})
		resp, got := do(t, e.headerClient(), e.newReq(t, "POST", bo.URL, "/big", bytes.NewReader(body)))
		if resp.StatusCode != 503 || got != "busy\n" {
			t.Errorf("got %d %q, want the origin's 503 (a streamed body cannot be replayed)", resp.StatusCode, got)
		}
		if seen := bo.seen(); len(seen) != 1 || !bytes.Equal(seen[0], body) {
			t.Errorf("origin saw %d bodies, want the whole body once", len(seen))
		}
	})
	t.Run("chunked", func(t *testing.T) {
		t.Parallel()
		bo := newBodyOrigin(t, 0)
		e := newEnv(t, envOptions{upstreams: 1, opts: opts})
		resp, got := do(t, e.headerClient(), e.newReq(t, "POST", bo.URL, "/big", io.MultiReader(bytes.NewReader(body))))
		if want := fmt.Sprintf("%d %s", len(body), digest(body)); resp.StatusCode != 200 || got != want {
			t.Errorf("got %d %q, want %q", resp.StatusCode, got, want)
		}
	})
	t.Run("retried when nothing was sent", func(t *testing.T) {
		// The dead IP fails at connect, before any body byte left: the
		// body is still whole and goes through the next IP.
		t.Parallel()
		bo := newBodyOrigin(t, 0)
		e := newEnv(t, envOptions{leading: []string{deadAddr(t)}, upstreams: 1, retries: 1, opts: opts})
		resp, got := do(t, e.headerClient(), e.newReq(t, "POST", bo.URL, "/big", bytes.NewReader(body)))
		if want := fmt.Sprintf("%d %s", len(body), digest(body)); resp.StatusCode != 200 || got != want {
			t.Errorf("got %d %q, want %q", resp.StatusCode, got, want)
		}
	})
}

func TestE2ERequestBodyTooLarge(t *testing.T) {
	t.Parallel()
	bo := newBodyOrigin(t, 0)
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{MaxBodyBytes: 4 << 10}})
	c := e.headerClient()
	resp, body := do(t, c, e.newReq(t, "POST", bo.URL, "/", bytes.NewReader(payload(5<<10))))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("Content-Length over the limit: %d %q, want 413", resp.StatusCode, body)
	}
	resp, body = do(t, c, e.newReq(t, "POST", bo.URL, "/", io.MultiReader(bytes.NewReader(payload(5<<10)))))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked over the limit: %d %q, want 413", resp.StatusCode, body)
	}
	resp, body = do(t, c, e.newReq(t, "POST", bo.URL, "/", bytes.NewReader(payload(4<<10))))
	if resp.StatusCode != 200 {
		t.Errorf("body at the limit: %d %q", resp.StatusCode, body)
	}
	if n := len(bo.seen()); n != 1 {
		t.Errorf("origin saw %d bodies, want only the one within the limit", n)
	}
}

// A client's bad body must not be charged to the upstream IP, and the
// client must get the 4xx for its mistake, also when the body streams
// (larger than the retry buffer).
func TestE2EStreamedBodyClientErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		raw  func(target string) string
		want string
	}{
		{"chunked over MaxBodyBytes", func(target string) string {
			return "POST / HTTP/1.1\r\nHost: a\r\n" + HeaderTarget + ": " + target +
				"\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + string(payload(0x1000)) + "\r\n1000\r\n" + string(payload(0x1000)) + "\r\n0\r\n\r\n"
		}, "HTTP/1.1 413"},
		{"malformed chunk after the buffer", func(target string) string {
			return "POST / HTTP/1.1\r\nHost: a\r\n" + HeaderTarget + ": " + target +
				"\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + string(payload(0x1000)) + "\r\nzz\r\n\r\n"
		}, "HTTP/1.1 400"},
		{"client stalls inside the body", func(target string) string {
			return "POST / HTTP/1.1\r\nHost: a\r\n" + HeaderTarget + ": " + target +
				"\r\nContent-Length: 5000\r\n\r\n" + string(payload(4000))
		}, "HTTP/1.1 408"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bo := newBodyOrigin(t, 0)
			e := newEnv(t, envOptions{upstreams: 1, retries: 1, cfg: pool.Config{FailuresUntilQuarantine: 1},
				opts: Options{RetryBufferBytes: 1 << 10, MaxBodyBytes: 6 << 10, BodyReadTimeout: 200 * time.Millisecond}})
			out := rawRequest(t, e.addr, tc.raw(bo.URL))
			if !strings.HasPrefix(statusLine(out), tc.want) {
				t.Errorf("got %q, want %s", statusLine(out), tc.want)
			}
			for _, a := range e.attemptsN(t, 1) {
				if !a.OK {
					t.Errorf("the client's bad body was charged to IP %s (%s)", a.Addr, a.Reason)
				}
			}
			snap, _ := e.pool().Snapshot(context.Background())
			for _, s := range snap {
				if s.State == pool.StateQuarantined {
					t.Errorf("IP %s quarantined because of a client's body", s.Addr)
				}
			}
		})
	}
}

// --- responses --------------------------------------------------------------------

// Not parallel: it measures the process heap.
func TestE2ELargeResponseConstantMemory(t *testing.T) {
	const size = 64 << 20
	chunk := payload(32 << 10)
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	e := newEnv(t, envOptions{upstreams: 1, quiet: true})
	c := e.headerClient()
	for _, path := range []string{"/sized", "/chunked"} {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		base := ms.HeapInuse
		var peak atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}()
		start := time.Now()
		resp, err := c.Do(e.newReq(t, "GET", o.URL, path, nil))
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		close(stop)
		wg.Wait()
		if err != nil || n != size {
			t.Fatalf("%s: read %d bytes, %v; want %d", path, n, err, size)
		}
		growth := int64(peak.Load()) - int64(base)
		t.Logf("%s: 64 MiB in %s, heap in use grew by %.1f MiB at most", path, time.Since(start), float64(growth)/(1<<20))
		if growth > 16<<20 {
			t.Errorf("%s: heap in use grew by %d bytes streaming %d: the body is buffered", path, growth, size)
		}
	}
}

func TestE2EStreamingResponse(t *testing.T) {
	t.Parallel()
	gotFirst := make(chan struct{})
	waited := make(chan bool, 1)
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-gotFirst:
			waited <- true
		case <-time.After(5 * time.Second):
			waited <- false
		}
		io.WriteString(w, "second\n")
	})
	e := newEnv(t, envOptions{upstreams: 1})
	resp, err := e.headerClient().Do(e.newReq(t, "GET", o.URL, "/stream", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("Transfer-Encoding %v, want chunked", resp.TransferEncoding)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	close(gotFirst)
	if !<-waited {
		t.Fatal("the first part reached the client only after the origin finished: response not streamed")
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Errorf("rest %q %v", rest, err)
	}
}

// --- upstream credentials and connection reuse -----------------------------------

func TestE2EUpstreamProxyAuth(t *testing.T) {
	t.Parallel()
	plain := newOrigin(t, false, nil)
	secure := newOrigin(t, true, nil)
	// The agent has no credentials for upstream 0: its 407 is the
	// upstream's refusal, not an origin answer, so the request moves on.
	// (tinyproxy answers wrong credentials with 401, not 407, so missing
	// ones are what make it say 407.)
	e := newEnv(t, envOptions{upstreams: 2, retries: 1, tls: caOf(secure),
		tinyproxy: testenv.TinyproxyOptions{BasicAuth: "hopper:s3cret"},
		creds:     []string{"", "hopper:s3cret"},
		cfg:       pool.Config{FailuresUntilQuarantine: 10}})
	c := e.headerClient()
	for i, o := range []*origin{plain, secure} {
		resp, body := do(t, c, e.newReq(t, "GET", o.URL, "/auth", nil))
		if resp.StatusCode != 200 || body != "GET /auth" {
			t.Fatalf("%s: %d %q", o.URL, resp.StatusCode, body)
		}
		log := e.attemptsN(t, 2*(i+1))[2*i:]
		want := []string{"proxy_status_407", "connect_status_407"}[i]
		if log[0].Addr != e.upstream[0].Addr || log[0].OK || log[0].Reason != want || !log[1].OK {
			t.Errorf("%s: attempts %+v, want %s on %s then success", o.URL, log, want, e.upstream[0].Addr)
		}
	}
	for _, r := range plain.requests() {
		if r.Header.Get("Proxy-Authorization") != "" {
			t.Error("Proxy-Authorization reached the origin")
		}
	}
}

// An upstream that closes a kept-alive connection while it sits idle: the
// agent notices on reuse and sends the request again on a fresh connection
// through the same IP, without counting a failure.
func TestE2EStaleUpstreamConnection(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	up := tcpOrigin(t, func(c *net.TCPConn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
		time.Sleep(20 * time.Millisecond) // then "idle timeout": close
	})
	e := newEnv(t, envOptions{leading: []string{up}, retries: 0})
	c := e.headerClient()
	for i := 0; i < 3; i++ {
		resp, body := do(t, c, e.newReq(t, "GET", "http://example.invalid", "/s", nil))
		if resp.StatusCode != 200 || body != "fine" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond) // let the upstream close it
	}
	for _, a := range e.attemptsN(t, 3) {
		if !a.OK {
			t.Errorf("stale connection counted against the IP: %+v", a)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("upstream saw %d connections, want 3", n)
	}
}

// Responses without a body (HEAD, 204, 304) keep the client connection in
// sync: the next request on it is answered normally.
func TestE2EBodylessResponsesKeepAlive(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "1234")
			if r.Method != "HEAD" {
				w.Write(payload(1234))
			}
		}
	})
	e := newEnv(t, envOptions{upstreams: 2})
	cn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	cn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(cn)
	for _, step := range []struct {
		method, path string
		status       int
		bodyLen      int
	}{
		{"HEAD", "/h", 200, 0}, {"GET", "/204", 204, 0}, {"GET", "/304", 304, 0}, {"GET", "/g", 200, 1234}, {"HEAD", "/h2", 200, 0}, {"GET", "/g2", 200, 1234},
	} {
		fmt.Fprintf(cn, "%s %s HTTP/1.1\r\nHost: a\r\n%s: %s\r\n\r\n", step.method, step.path, HeaderTarget, o.URL)
		resp, body := readRawResponse(t, br, step.method)
		if resp.StatusCode != step.status || len(body) != step.bodyLen {
			t.Fatalf("%s %s: %d with %d body bytes, want %d with %d", step.method, step.path, resp.StatusCode, len(body), step.status, step.bodyLen)
		}
		if step.method == "HEAD" && resp.Header.Get("Content-Length") != "1234" {
			t.Errorf("HEAD lost its Content-Length: %v", resp.Header)
		}
	}
	if e.accepted.Load() != 1 {
		t.Errorf("%d client connections", e.accepted.Load())
	}
}

// A response the origin cuts short must reach the client as broken, never
// as a complete shorter body, and counts against the attempt.
func TestE2ETruncatedResponse(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		c, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		if r.URL.Path == "/sized" {
			bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
		} else {
			bw.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly part\r\n")
		}
		bw.Flush()
	})
	e := newEnv(t, envOptions{upstreams: 1})
	c := e.headerClient()
	for _, path := range []string{"/sized", "/chunked"} {
		resp, err := c.Do(e.newReq(t, "GET", o.URL, path, nil))
		if err != nil {
			continue // broken before the head: also fine
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("%s: truncated response read as complete: %q", path, b)
		}
	}
}

// A body too large to replay must not be sent on a kept connection the
// upstream may have closed meanwhile: if it is and the connection turns
// out stale, the body is half gone and the request fails (502) although
// the IP is fine.
func TestE2EStreamedBodyOnStaleConnection(t *testing.T) {
	t.Parallel()
	up := tcpOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(strconv.Itoa(int(n))), strconv.Itoa(int(n)))
		time.Sleep(20 * time.Millisecond) // then "idle timeout": close
	})
	e := newEnv(t, envOptions{leading: []string{up}, retries: 0, opts: Options{RetryBufferBytes: 1 << 10}})
	c := e.headerClient()
	if resp, body := do(t, c, e.newReq(t, "GET", "http://example.invalid", "/warm", nil)); resp.StatusCode != 200 || body != "0" {
		t.Fatalf("warm-up: %d %q", resp.StatusCode, body)
	}
	time.Sleep(100 * time.Millisecond) // the kept upstream connection is closed now
	body := payload(64 << 10)
	resp, got := do(t, c, e.newReq(t, "POST", "http://example.invalid", "/big", bytes.NewReader(body)))
	if resp.StatusCode != 200 || got != strconv.Itoa(len(body)) {
		t.Errorf("streamed POST after the upstream closed its kept connection: %d %q", resp.StatusCode, got)
	}
}
