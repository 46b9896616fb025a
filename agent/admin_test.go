package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

const testAdminToken = "test-admin-token-0123456789"

// adminEnv is an agent started in-process with server.admin on, a local
// origin behind it, and clients for both ends.
type adminEnv struct {
	t      *testing.T
	a      *Agent
	stop   func() // ends Run and waits for it (once; the test's cleanup calls it too)
	path   string // the config file
	proxy  string // proxy listener host:port
	base   string // http://admin host:port
	origin *httptest.Server
	client *http.Client
}

// startAdminAgent runs an agent with the admin API on a free port. server
// holds extra server-block lines, rest the sections after it (targets with
// %[1]s for the origin's host regex left to the caller).
func startAdminAgent(t *testing.T, server, rest string) *adminEnv {
	t.Helper()
	return startAdminAgentToken(t, testAdminToken, server, rest)
}

// startAdminAgentToken is startAdminAgent with server.adminToken set to
// token, or not set when token is "".
func startAdminAgentToken(t *testing.T, token, server, rest string) *adminEnv {
	t.Helper()
	if token != "" {
		server = "  adminToken: " + token + "\n" + server
	}
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(time.Second)
		}
		fmt.Fprint(w, "hello")
	}))
	t.Cleanup(origin.Close)
	port := testenv.FreePort(t, "127.0.0.1")
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	body := testenv.AgentConfig(fmt.Sprintf(`
server:
  host: 127.0.0.1
  shutdownTimeout: 3s
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
%s
%s`, port, server, rest))
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	a, ln := newFileAgent(t, cfgPath)
	stop := runInBackground(t, a)
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	testenv.WaitListening(t, addr, 5*time.Second)
	// The port accepts as soon as Run has opened it, a moment before
	// AdminAddr is set.
	testenv.Eventually(t, 5*time.Second, func() error {
		if a.AdminAddr() == nil {
			return errors.New("still waiting for AdminAddr")
		}
		return nil
	})
	if got := a.AdminAddr(); got.String() != addr {
		t.Errorf("AdminAddr = %v, want %s", got, addr)
	}
	return &adminEnv{t: t, a: a, stop: stop, path: cfgPath, proxy: ln.Addr().String(), base: "http://" + addr, origin: origin,
		client: &http.Client{Transport: &http.Transport{}, Timeout: 15 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// call sends an admin request; token "" sends no Authorization header.
func (e *adminEnv) call(method, path, token, body string) (int, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// api sends an authorised request and checks the status.
func (e *adminEnv) api(method, path, body string, want int) string {
	e.t.Helper()
	code, got := e.call(method, path, testAdminToken, body)
	if code != want {
		e.t.Fatalf("%s %s: %d %s, want %d", method, path, code, got, want)
	}
	return got
}

// fetch sends one request through the proxy to the origin path.
func (e *adminEnv) fetch(path string) int {
	e.t.Helper()
	req, _ := http.NewRequest("GET", "http://"+e.proxy+path, nil)
	req.Header.Set(proxy.HeaderTarget, e.origin.URL)
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("GET %s through the proxy: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (e *adminEnv) target(name string) admin.TargetView {
	e.t.Helper()
	var v admin.TargetView
	if err := json.Unmarshal([]byte(e.api("GET", "/api/targets/"+name, "", 200)), &v); err != nil {
		e.t.Fatal(err)
	}
	return v
}

func findIP(v admin.TargetView, addr string) (admin.IPView, bool) {
	for _, ip := range v.IPs {
		if ip.Address == addr {
			return ip, true
		}
	}
	return admin.IPView{}, false
}

func oneTarget(ips ...string) string {
	return fmt.Sprintf(`targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipList: ["%s"]
    minRequestInterval: 0
    maxQueueWait: 5s
    numRetries: 2
    ipFailuresUntilQuarantine: 1
    quarantineTime: 1h
`, strings.Join(ips, `", "`))
}

func TestAdminAuth(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, "", oneTarget(tp.Addr))

	// Health endpoints need no token.
	if code, body := e.call("GET", "/healthz", "", ""); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := e.call("GET", "/readyz", "", ""); code != 200 || !strings.Contains(body, `"ready": true`) {
		t.Errorf("/readyz: %d %s", code, body)
	}
	for _, c := range []struct{ method, path, token, wantMsg string }{
		{"GET", "/api/targets", "", "missing token"},
		{"GET", "/api/targets", "wrong-token-0123456789", "wrong admin token"},
		{"GET", "/api/targets", testAdminToken + "x", "wrong admin token"},
		{"GET", "/api/status", "", "missing token"},
		{"GET", "/api/no-such-endpoint", "", "missing token"},
		{"POST", "/api/targets/web/ips", "", "missing token"},
		{"DELETE", "/api/targets/web/ips/" + tp.Addr, "nope", "wrong admin token"},
	} {
		code, body := e.call(c.method, c.path, c.token, `{"address":"127.0.0.9:1"}`)
		var doc struct{ Error, Message string }
		json.Unmarshal([]byte(body), &doc)
		if code != 401 || doc.Error != "unauthorized" || !strings.Contains(doc.Message, c.wantMsg) {
			t.Errorf("%s %s token %q: %d %s, want 401 %q", c.method, c.path, c.token, code, body, c.wantMsg)
		}
	}
	// Basic auth or another scheme is not a bearer token.
	req, _ := http.NewRequest("GET", e.base+"/api/targets", nil)
	req.SetBasicAuth("admin", testAdminToken)
	if resp, err := e.client.Do(req); err != nil || resp.StatusCode != 401 {
		t.Errorf("basic auth: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if code, _ := e.call("GET", "/api/targets", testAdminToken, ""); code != 200 {
		t.Errorf("right token: %d", code)
	}
	if code, body := e.call("GET", "/api/no-such-endpoint", testAdminToken, ""); code != 404 || !strings.Contains(body, `"not_found"`) {
		t.Errorf("unknown endpoint with token: %d %s", code, body)
	}
	if code, _ := e.call("PUT", "/api/targets", testAdminToken, ""); code != 405 && code != 404 {
		t.Errorf("PUT /api/targets: %d, want 405 or 404", code)
	}

	// The page: login form without a token, a session cookie from the
	// form; the cookie alone changes nothing (403 csrf). A token in the URL is refused.
	code, body := e.call("GET", "/", "", "")
	if code != 401 || !strings.Contains(body, `action="/login"`) {
		t.Errorf("page without token: %d %.200s", code, body)
	}
	if code, body := e.call("GET", "/?token="+url.QueryEscape(testAdminToken), "", ""); code != 400 || !strings.Contains(body, "not accepted") {
		t.Errorf("page with the token in the URL: %d %.200s, want 400", code, body)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{}}
	resp, err := browser.PostForm(e.base+"/login", url.Values{"token": {testAdminToken}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/" || !strings.Contains(string(b), `data-target="web"`) {
		t.Fatalf("page after the login form: %d at %s: %.300s", resp.StatusCode, resp.Request.URL, b)
	}
	for _, c := range jar.Cookies(resp.Request.URL) {
		if strings.Contains(c.Value, testAdminToken) {
			t.Errorf("session cookie holds the token")
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'nonce-") {
		t.Errorf("page CSP: %q", csp)
	}
	resp, err = browser.Get(e.base + "/api/targets")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /api/targets with the session cookie: %d", resp.StatusCode)
	}
	resp, err = browser.Post(e.base+"/api/targets/web/ips", "application/json", strings.NewReader(`{"address":"127.0.0.9:1"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(b), `"csrf"`) {
		t.Errorf("POST with only the session cookie: %d %s, want 403 csrf", resp.StatusCode, b)
	}
	// Log out, then log in through the form.
	if resp, err = browser.Post(e.base+"/logout", "", nil); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("page after logout: %d, want the login form (401)", resp.StatusCode)
	}
	resp, err = browser.PostForm(e.base+"/login", url.Values{"token": {"not-it"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("login with a wrong token: %d", resp.StatusCode)
	}
	resp, err = browser.PostForm(e.base+"/login", url.Values{"token": {testAdminToken}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `id="targets"`) {
		t.Errorf("login form: %d %.200s", resp.StatusCode, b)
	}
}

// TestAdminTargetsAfterTraffic drives traffic over a healthy IP, one that
// needs credentials and a dead one, then reads GET /api/targets.
func TestAdminTargetsAfterTraffic(t *testing.T) {
	plain := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	authed := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{BasicAuth: "puser:s3cretpass"})
	dead := net.JoinHostPort("127.0.0.4", fmt.Sprint(testenv.FreePort(t, "127.0.0.4")))
	e := startAdminAgent(t, "", fmt.Sprintf(`proxyProviders:
  - name: lab
    ipList: ["%s", "http://puser:s3cretpass@%s", "%s"]
    regionTag: eu
ipPools:
  - name: all
    ipRequests:
      - provider: lab
        count: 3
targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipPool: all
    minRequestInterval: 0
    maxQueueWait: 5s
    numRetries: 2
    ipFailuresUntilQuarantine: 1
    quarantineTime: 1h
`, plain.Addr, authed.Addr, dead))

	for range 8 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	// Request hooks run just after the client has its answer.
	var status admin.StatusView
	testenv.Eventually(t, 5*time.Second, func() error {
		json.Unmarshal([]byte(e.api("GET", "/api/status", "", 200)), &status)
		if status.Traffic.Requests != 8 {
			return errors.New("still waiting for 8 requests recorded")
		}
		return nil
	})
	body := e.api("GET", "/api/targets", "", 200)
	if strings.Contains(body, "s3cretpass") || strings.Contains(body, "puser") {
		t.Errorf("credentials in /api/targets: %s", body)
	}
	var doc struct{ Targets []admin.TargetView }
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Targets) != 1 || doc.Targets[0].Name != "web" || len(doc.Targets[0].IPs) != 3 {
		t.Fatalf("targets: %s", body)
	}
	v := doc.Targets[0]
	if v.QuarantineSeconds != 3600 {
		t.Errorf("quarantineSeconds = %v", v.QuarantineSeconds)
	}
	d, ok := findIP(v, dead)
	if !ok || d.State != pool.StateQuarantined || d.ConsecutiveFailures != 1 || d.Requests != 1 || d.FailedRequests != 1 ||
		d.ReleaseAt.Before(time.Now().Add(59*time.Minute)) || d.Provider != "lab" || d.Region != "eu" || d.Draining {
		t.Errorf("dead IP: %+v (found %v)", d, ok)
	}
	var total uint64
	for _, addr := range []string{plain.Addr, authed.Addr} {
		ip, ok := findIP(v, addr)
		if !ok || ip.State != pool.StateAvailable || ip.ConsecutiveFailures != 0 || ip.Requests == 0 || ip.FailedRequests != 0 || ip.Provider != "lab" {
			t.Errorf("IP %s: %+v (found %v)", addr, ip, ok)
		}
		if ip.Probe != nil {
			t.Errorf("IP %s has a probe result without a prober: %+v", addr, ip.Probe)
		}
		total += ip.Requests
	}
	if total != 8 {
		t.Errorf("requests over the healthy IPs = %d, want 8", total)
	}
	if got := uint64(len(plain.Requests(t)) + len(authed.Requests(t))); got != total {
		t.Errorf("tinyproxy logged %d requests, the admin API counts %d", got, total)
	}
	if v.Counts[pool.StateAvailable] != 2 || v.Counts[pool.StateQuarantined] != 1 {
		t.Errorf("counts: %v", v.Counts)
	}
	if status.Traffic.Total["success"] != 8 || status.Traffic.Recent["success"] != 8 || status.Traffic.Rate <= 0 {
		t.Errorf("traffic: %+v", status.Traffic)
	}
	if len(status.Events) != 1 || status.Events[0].Kind != admin.EventQuarantined || status.Events[0].Address != dead || status.Events[0].Target != "web" {
		t.Errorf("events: %+v", status.Events)
	}
	page := e.api("GET", "/", "", 200)
	if strings.Contains(page, "s3cretpass") || strings.Contains(page, "puser") {
		t.Errorf("credentials on the page")
	}
}

// TestAdminAddRemoveIPs adds an IP at run time and checks it takes
// traffic, removes one while it carries a request (it drains), removes the
// last one (requests wait) and adds one back (the waiting request is served).
func TestAdminAddRemoveIPs(t *testing.T) {
	a := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	b := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, "", oneTarget(a.Addr))

	for range 3 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if got := len(b.Requests(t)); got != 0 {
		t.Fatalf("b carried %d requests before it was added", got)
	}
	got := e.api("POST", "/api/targets/web/ips", fmt.Sprintf(`{"address": %q}`, b.Addr), 201)
	if !strings.Contains(got, `"added": true`) {
		t.Errorf("add: %s", got)
	}
	if _, ok := findIP(e.target("web"), b.Addr); !ok {
		t.Fatalf("added IP not listed")
	}
	e.api("POST", "/api/targets/web/ips", fmt.Sprintf(`{"address": %q}`, b.Addr), 409)
	for range 6 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if len(a.Requests(t)) < 4 || len(b.Requests(t)) < 2 {
		t.Fatalf("after adding b: a carried %d, b %d requests; want both in rotation", len(a.Requests(t)), len(b.Requests(t)))
	}

	// Remove a while it carries a slow request: that request completes,
	// a drains, then only b carries traffic. Two slow requests hold both IPs.
	slow := make(chan int, 2)
	go func() { slow <- e.fetch("/slow") }()
	go func() { slow <- e.fetch("/slow") }()
	testenv.Eventually(t, 5*time.Second, func() error {
		v := e.target("web")
		if v.Counts[pool.StateInUse] != 2 {
			return errors.New("still waiting for both IPs in use")
		}
		return nil
	})
	e.api("DELETE", "/api/targets/web/ips/"+a.Addr, "", 200)
	v := e.target("web")
	if ipA, ok := findIP(v, a.Addr); !ok || !ipA.Draining || ipA.State != pool.StateInUse {
		t.Errorf("removed IP in use: %+v (listed %v), want in-use and draining", ipA, ok)
	}
	for range 2 {
		if code := <-slow; code != 200 {
			t.Errorf("request in flight on a removed IP: %d", code)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		_, ok := findIP(e.target("web"), a.Addr)
		if ok {
			return errors.New("still waiting for a gone")
		}
		return nil
	})
	aCount := len(a.Requests(t))
	for range 4 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if got := len(a.Requests(t)); got != aCount {
		t.Errorf("removed IP carried %d more requests", got-aCount)
	}
	e.api("DELETE", "/api/targets/web/ips/"+a.Addr, "", 404)
	// The last IP goes too: a request then waits for an IP, and one added
	// meanwhile serves it.
	e.api("DELETE", "/api/targets/web/ips/"+b.Addr, "", 200)
	if ips := e.target("web").IPs; len(ips) != 0 {
		t.Fatalf("IPs after removing the last one: %+v", ips)
	}
	queued := make(chan int, 1)
	go func() { queued <- e.fetch("/queued") }()
	testenv.Eventually(t, 5*time.Second, func() error { // queued (maxQueueWait 5s)
		if n := e.a.backend.(interface{ Waiting(string) int }).Waiting("web"); n != 1 {
			return fmt.Errorf("%d requests waiting for an IP, want 1", n)
		}
		return nil
	})
	select {
	case code := <-queued:
		t.Fatalf("request with no IP answered %d at once, want it to wait", code)
	default:
	}
	bCount := len(b.Requests(t))
	e.api("POST", "/api/targets/web/ips", fmt.Sprintf(`{"address": %q}`, b.Addr), 201)
	if code := <-queued; code != 200 {
		t.Errorf("queued request after an IP was added: %d", code)
	}
	if got := len(b.Requests(t)); got != bCount+1 {
		t.Errorf("re-added IP carried %d requests, want 1", got-bCount)
	}
}

func TestAdminBadInput(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, "", oneTarget(tp.Addr))
	for _, c := range []struct {
		method, path, body string
		code               int
		errCode, msg       string
	}{
		{"GET", "/api/targets/nope", "", 404, "unknown_target", `target "nope" does not exist`},
		{"POST", "/api/targets/nope/ips", `{"address":"127.0.0.9:80"}`, 404, "unknown_target", `target "nope" does not exist`},
		{"DELETE", "/api/targets/nope/ips/127.0.0.9:80", "", 404, "unknown_target", `target "nope" does not exist`},
		{"DELETE", "/api/targets/web/ips/127.0.0.9:80", "", 404, "unknown_ip", `target "web" has no IP 127.0.0.9:80`},
		{"DELETE", "/api/targets/web/ips/not-an-ip", "", 400, "bad_address", `"not-an-ip" is not host:port`},
		{"DELETE", "/api/targets/web/ips/127.0.0.9:99999", "", 400, "bad_address", "port must be a number from 1 to 65535"},
		{"POST", "/api/targets/web/ips", `{"address":`, 400, "bad_json", "request body"},
		{"POST", "/api/targets/web/ips", `not json`, 400, "bad_json", "request body"},
		{"POST", "/api/targets/web/ips", ``, 400, "bad_json", "request body is empty"},
		{"POST", "/api/targets/web/ips", `{"address":"127.0.0.9:80","port":1}`, 400, "bad_json", `unknown field "port"`},
		{"POST", "/api/targets/web/ips", `{"address":"127.0.0.9:80"} {}`, 400, "bad_json", "more than one JSON value"},
		{"POST", "/api/targets/web/ips", `{"address":5}`, 400, "bad_json", "request body"},
		{"POST", "/api/targets/web/ips", `{"address":""}`, 400, "bad_address", "empty address"},
		{"POST", "/api/targets/web/ips", `{"address":"127.0.0.9"}`, 400, "bad_address", "is not host:port"},
		{"POST", "/api/targets/web/ips", `{"address":"u:p@127.0.0.9:80"}`, 400, "bad_address", "must not carry credentials"},
		{"POST", "/api/targets/web/ips", `{"address":"http://127.0.0.9:80"}`, 400, "bad_address", "is a URL"},
		{"POST", "/api/targets/web/ips", `{"address":"<b>x</b>:80"}`, 400, "bad_address", "neither an IP address nor a host name"},
		{"POST", "/api/targets/web/ips", `{"address":"[fe80::1%eth0]:80"}`, 400, "bad_address", "zones are not supported"},
	} {
		code, body := e.call(c.method, c.path, testAdminToken, c.body)
		var doc struct{ Error, Message string }
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Errorf("%s %s %s: not JSON: %s", c.method, c.path, c.body, body)
			continue
		}
		if code != c.code || doc.Error != c.errCode || !strings.Contains(doc.Message, c.msg) {
			t.Errorf("%s %s %s: %d %s, want %d %s %q", c.method, c.path, c.body, code, body, c.code, c.errCode, c.msg)
		}
	}
	// Nothing changed, and the agent still serves.
	if v := e.target("web"); len(v.IPs) != 1 || v.IPs[0].Address != tp.Addr {
		t.Errorf("IPs after bad input: %+v", v.IPs)
	}
	if code := e.fetch("/x"); code != 200 {
		t.Errorf("request after bad input: %d", code)
	}
}

// TestAdminRedis runs the API over backend: redis: quarantine, release,
// add and remove go through Redis; /readyz pings it, and with Redis down it
// answers 503 with the reason (changes too), and 200 again once it is back.
func TestAdminRedis(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	tp2 := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, fmt.Sprintf("  backend: redis\n  redisUrl: %s\n  redisKeyPrefix: 'admin-test-%d:'", srv.URL(0), os.Getpid()), oneTarget(tp.Addr))
	if code, body := e.call("GET", "/readyz", "", ""); code != 200 || !strings.Contains(body, `"backend": "redis"`) {
		t.Fatalf("/readyz with redis up: %d %s", code, body)
	}
	if code := e.fetch("/x"); code != 200 {
		t.Fatalf("request: %d", code)
	}
	e.api("POST", "/api/targets/web/ips", fmt.Sprintf(`{"address": %q}`, tp2.Addr), 201)
	e.api("POST", "/api/targets/web/ips/"+tp.Addr+"/quarantine", "", 200)
	if ip, _ := findIP(e.target("web"), tp.Addr); ip.State != pool.StateQuarantined {
		t.Errorf("quarantined over redis: %+v", ip)
	}
	for range 3 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if got := len(tp2.Requests(t)); got != 3 {
		t.Errorf("the added IP carried %d of 3 requests while the other was quarantined", got)
	}
	e.api("POST", "/api/targets/web/ips/"+tp.Addr+"/release", "", 200)
	e.api("POST", "/api/targets/web/ips/"+tp.Addr+"/release", "", 409)
	e.api("DELETE", "/api/targets/web/ips/"+tp2.Addr, "", 200)
	testenv.Eventually(t, 5*time.Second, func() error {
		v := e.target("web")
		if !(len(v.IPs) == 1 && v.IPs[0].Address == tp.Addr && v.IPs[0].State == pool.StateAvailable) {
			return errors.New("still waiting for the removed IP gone from redis")
		}
		return nil
	})

	srv.Stop()
	// Without the token /readyz says which check failed; with it, why.
	code, body := e.call("GET", "/readyz", "", "")
	var doc struct {
		Ready          bool
		Reason, Detail string
	}
	json.Unmarshal([]byte(body), &doc)
	if code != 503 || doc.Ready || doc.Reason != "backend unreachable" || doc.Detail != "" {
		t.Errorf("/readyz with redis down: %d %s", code, body)
	}
	code, body = e.call("GET", "/readyz", testAdminToken, "")
	json.Unmarshal([]byte(body), &doc)
	if code != 503 || !strings.Contains(doc.Detail, "backend redis unreachable") {
		t.Errorf("/readyz with redis down, with the token: %d %s", code, body)
	}
	if code, _ := e.call("GET", "/healthz", "", ""); code != 200 {
		t.Errorf("/healthz with redis down: %d", code)
	}
	// The listing says why it cannot read the pool instead of failing.
	v := e.target("web")
	if v.Error == "" || len(v.IPs) != 0 {
		t.Errorf("target with redis down: %+v", v)
	}
	if code, body := e.call("POST", "/api/targets/web/ips/"+tp.Addr+"/quarantine", testAdminToken, ""); code != 503 || !strings.Contains(body, "backend_unavailable") {
		t.Errorf("quarantine with redis down: %d %s", code, body)
	}
	srv.Start()
	testenv.Eventually(t, 5*time.Second, func() error {
		code, _ := e.call("GET", "/readyz", "", "")
		if code != 200 {
			return errors.New("still waiting for /readyz 200 after redis is back")
		}
		return nil
	})
}

// TestAdminQuarantineRelease quarantines an IP through the API, checks
// traffic avoids it, releases it and checks traffic comes back to it.
func TestAdminQuarantineRelease(t *testing.T) {
	a := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	b := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	metricsPort := testenv.FreePort(t, "127.0.0.1")
	e := startAdminAgent(t, fmt.Sprintf("  metrics: true\n  metricsPort: %d", metricsPort), oneTarget(a.Addr, b.Addr))
	qpath := "/api/targets/web/ips/" + a.Addr + "/quarantine"
	rpath := "/api/targets/web/ips/" + a.Addr + "/release"

	var q struct {
		Quarantined, Pending bool
		ReleaseAt            time.Time
	}
	json.Unmarshal([]byte(e.api("POST", qpath, "", 200)), &q)
	if !q.Quarantined || q.Pending || q.ReleaseAt.Before(time.Now().Add(59*time.Minute)) {
		t.Errorf("quarantine answer: %+v, want released in the target's quarantineTime (1h)", q)
	}
	ip, _ := findIP(e.target("web"), a.Addr)
	if ip.State != pool.StateQuarantined || !ip.ReleaseAt.Equal(q.ReleaseAt) {
		t.Errorf("quarantined IP listed as %+v", ip)
	}
	before := len(a.Requests(t))
	for range 6 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if got := len(a.Requests(t)); got != before {
		t.Errorf("the quarantined IP carried %d requests", got-before)
	}
	if got := len(b.Requests(t)); got != 6 {
		t.Errorf("b carried %d requests, want all 6", got)
	}

	if got := e.api("POST", rpath, "", 200); !strings.Contains(got, `"released": true`) {
		t.Errorf("release: %s", got)
	}
	got := e.api("POST", rpath, "", 409)
	if !strings.Contains(got, `"not_quarantined"`) || !strings.Contains(got, a.Addr) {
		t.Errorf("second release: %s", got)
	}
	for range 4 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if got := len(a.Requests(t)); got < before+2 {
		t.Errorf("released IP carried %d requests, want back in rotation", got-before)
	}

	// A short quarantine ends by itself.
	var short struct{ ReleaseAt time.Time }
	json.Unmarshal([]byte(e.api("POST", qpath, `{"seconds": 0.3}`, 200)), &short)
	if d := time.Until(short.ReleaseAt); d > 400*time.Millisecond || d < 0 {
		t.Errorf("seconds 0.3: release in %s", d)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		ip, _ := findIP(e.target("web"), a.Addr)
		if ip.State != pool.StateAvailable {
			return errors.New("still waiting for the short quarantine to end")
		}
		return nil
	})

	// Quarantining an IP in use is pending until its use ends.
	slow := make(chan int, 2)
	go func() { slow <- e.fetch("/slow") }()
	go func() { slow <- e.fetch("/slow") }()
	testenv.Eventually(t, 5*time.Second, func() error {
		if e.target("web").Counts[pool.StateInUse] != 2 {
			return errors.New("still waiting for both IPs in use")
		}
		return nil
	})
	json.Unmarshal([]byte(e.api("POST", qpath, `{"seconds": 3600}`, 200)), &q)
	if !q.Pending {
		t.Errorf("quarantine of an IP in use: not pending")
	}
	if ip, _ := findIP(e.target("web"), a.Addr); ip.State != pool.StateInUse || ip.QuarantinePendingUntil.IsZero() {
		t.Errorf("IP in use after quarantine: %+v", ip)
	}
	for range 2 {
		if code := <-slow; code != 200 {
			t.Errorf("request on an IP quarantined in flight: %d", code)
		}
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		ip, _ := findIP(e.target("web"), a.Addr)
		if ip.State != pool.StateQuarantined {
			return errors.New("still waiting for the pending quarantine to start")
		}
		return nil
	})

	var events []admin.Event
	var doc struct{ Events []admin.Event }
	json.Unmarshal([]byte(e.api("GET", "/api/events", "", 200)), &doc)
	events = doc.Events
	var kinds []string
	for _, ev := range events {
		if ev.Address != a.Addr || ev.Target != "web" {
			t.Errorf("event of another IP: %+v", ev)
		}
		kinds = append(kinds, ev.Kind)
	}
	// Newest first: quarantine (pending), released (timer), quarantined
	// (0.3s), released (API), quarantined (API).
	if want := "quarantined released quarantined released quarantined"; strings.Join(kinds, " ") != want {
		t.Errorf("events: %v, want %s", kinds, want)
	}

	// The metrics see the API's quarantines as the page does.
	resp, err := e.client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf(`proxy_hopper_ip_quarantine_events_total{address=%q,provider="",region="",target="web"} 3`, a.Addr); !strings.Contains(string(mb), want) {
		t.Errorf("/metrics lacks %s", want)
	}

	for _, c := range []struct {
		path, body string
		code       int
		errCode    string
	}{
		{"/api/targets/web/ips/127.0.0.9:1/quarantine", "", 404, "unknown_ip"},
		{"/api/targets/web/ips/127.0.0.9:1/release", "", 404, "unknown_ip"},
		{"/api/targets/nope/ips/" + a.Addr + "/quarantine", "", 404, "unknown_target"},
		{"/api/targets/web/ips/bogus/quarantine", "", 400, "bad_address"},
		{qpath, `{"seconds": -1}`, 400, "bad_seconds"},
		{qpath, `{"seconds": 1e12}`, 400, "bad_seconds"},
		{qpath, `{"seconds": "10"}`, 400, "bad_json"},
		{qpath, `{"secs": 10}`, 400, "bad_json"},
		{"/api/targets/web/ips/" + b.Addr + "/release", "", 409, "not_quarantined"},
	} {
		code, body := e.call("POST", c.path, testAdminToken, c.body)
		if code != c.code || !strings.Contains(body, `"`+c.errCode+`"`) {
			t.Errorf("POST %s %s: %d %s, want %d %s", c.path, c.body, code, body, c.code, c.errCode)
		}
	}
}

// TestAdminShutdownAndOff: /readyz answers 503 while the agent drains
// requests in flight on shutdown, then the admin listener closes; with
// server.admin off there is no admin listener at all.
func TestAdminShutdownAndOff(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	var arrived atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		time.Sleep(time.Second)
		fmt.Fprint(w, "slow")
	}))
	defer origin.Close()
	port := testenv.FreePort(t, "127.0.0.1")
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server:
  admin: true
  adminHost: 127.0.0.1
  adminPort: %d
  adminToken: %s
  shutdownTimeout: 5s
  probe: false
%s`, port, testAdminToken, oneTarget(tp.Addr))), 0o600)
	a, ln := newFileAgent(t, cfgPath)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	adminAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	testenv.WaitListening(t, adminAddr, 5*time.Second)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	slow := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
		req.Header.Set(proxy.HeaderTarget, origin.URL)
		resp, err := client.Do(req)
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		if arrived.Load() == 0 {
			return errors.New("the slow request is not at the origin")
		}
		return nil
	})
	cancel()
	var code int
	var body string
	testenv.Eventually(t, 5*time.Second, func() error {
		resp, err := client.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return errors.New("still waiting for /readyz 503 while shutting down")
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code, body = resp.StatusCode, string(b)
		if code != 503 {
			return errors.New("still waiting for /readyz 503 while shutting down")
		}
		return nil
	})
	if !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while shutting down: %d %s", code, body)
	}
	if got := <-slow; got != 200 {
		t.Errorf("request in flight at shutdown: %d", got)
	}
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
	if c, err := net.Dial("tcp", adminAddr); err == nil {
		c.Close()
		t.Errorf("admin listener open after Run returned")
	}

	// Off (the default): no listener on the admin port, even with a token.
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server:
  adminPort: %d
  adminToken: %s
  probe: false
%s`, port, testAdminToken, oneTarget(tp.Addr))), 0o600)
	a, ln = newFileAgent(t, cfgPath)
	ctx, cancel = context.WithCancel(context.Background())
	go func() { runErr <- a.Run(ctx) }()
	testenv.WaitListening(t, ln.Addr().String(), 5*time.Second)
	if c, err := net.Dial("tcp", adminAddr); err == nil {
		c.Close()
		t.Errorf("admin listener open with server.admin off")
	}
	if a.AdminAddr() != nil {
		t.Errorf("AdminAddr = %v with admin off", a.AdminAddr())
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestAdminProbeStatus runs the prober against the test's own origin and
// checks the API and the page show each IP's last probe.
func TestAdminProbeStatus(t *testing.T) {
	a := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	dead := net.JoinHostPort("127.0.0.3", fmt.Sprint(testenv.FreePort(t, "127.0.0.3"))) // refuses
	probeOrigin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		fmt.Fprint(w, "probe ok")
	}))
	defer probeOrigin.Close()
	e := startAdminAgent(t, fmt.Sprintf("  probe: true\n  probeUrls: [%q]\n  probeInterval: 300ms\n  probeTimeout: 3s", probeOrigin.URL),
		oneTarget(a.Addr, dead))
	var v admin.TargetView
	testenv.Eventually(t, 5*time.Second, func() error {
		v = e.target("web")
		for _, ip := range v.IPs {
			if ip.Probe == nil {
				return errors.New("still waiting for both IPs probed")
			}
		}
		if len(v.IPs) != 2 {
			return errors.New("still waiting for both IPs probed")
		}
		return nil
	})
	good, _ := findIP(v, a.Addr)
	bad, _ := findIP(v, dead)
	if p := good.Probe; !p.OK || p.Result != "ok" || p.LatencyMs < 20 || time.Since(p.At) > time.Minute {
		t.Errorf("probe of the healthy IP: %+v", p)
	}
	if p := bad.Probe; p.OK || p.Result != "proxy_unreachable" {
		t.Errorf("probe of the dead IP: %+v", p)
	}
	page := e.api("GET", "/", "", 200)
	if !strings.Contains(page, "probe ok ") || !strings.Contains(page, "probe proxy_unreachable ") {
		t.Errorf("page does not show the probes")
	}

	// An IP added through the API is probed from the next round on; a
	// removed one is not probed any more.
	b := testenv.StartTinyproxy(t, "127.0.0.4", testenv.TinyproxyOptions{})
	e.api("POST", "/api/targets/web/ips", fmt.Sprintf(`{"address": %q}`, b.Addr), 201)
	testenv.Eventually(t, 5*time.Second, func() error {
		ip, ok := findIP(e.target("web"), b.Addr)
		if !(ok && ip.Probe != nil && ip.Probe.OK) {
			return errors.New("still waiting for the added IP probed")
		}
		return nil
	})
	e.api("DELETE", "/api/targets/web/ips/"+a.Addr, "", 200)
	testenv.Eventually(t, 5*time.Second, func() error {
		_, ok := findIP(e.target("web"), a.Addr)
		if ok {
			return errors.New("still waiting for the removed IP gone")
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond) // a probe of a may have been in flight
	n := len(a.Requests(t))
	time.Sleep(time.Second) // three rounds
	if got := len(a.Requests(t)); got != n {
		t.Errorf("the removed IP was probed %d more times", got-n)
	}
	if got := len(b.Requests(t)); got < 2 {
		t.Errorf("the added IP was probed %d times in a second, want every round", got)
	}
}
