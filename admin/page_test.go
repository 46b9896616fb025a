package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

const token = "unit-test-admin-token-0123"

// Names and addresses that would inject markup if anything were not escaped
// (the pool takes any string as an address; the config and the API do not).
const (
	oddTarget = `t"><img src=x onerror="document.title='pwned'">`
	oddAddr   = `"><svg onload="document.title='pwned'"></svg><script>document.title='pwned'</script>:80`
	credAddr  = `puser:s3cretpass@10.0.0.1:3128`
)

// oddServer is an admin server over one memory pool with hostile strings,
// traffic and a quarantine event recorded.
func oddServer(t *testing.T) (*admin.Server, *httptest.Server) {
	t.Helper()
	backend := memory.New(nil)
	t.Cleanup(func() { backend.Close() })
	addrs := []string{oddAddr, credAddr, "10.0.0.2:3128"}
	p, err := pool.New(context.Background(), oddTarget, addrs, backend,
		pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: time.Hour, MaxQueueWait: time.Second},
		pool.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	rec := admin.NewRecorder(nil, 0)
	target := &proxy.Target{Name: oddTarget, Pool: p, Upstreams: map[string]proxy.Upstream{
		oddAddr: {Addr: oddAddr, Provider: `<b>prov</b>`, Region: `"reg"`},
	}}
	if err := p.Quarantine(context.Background(), oddAddr, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	rec.Quarantined(oddTarget, oddAddr, time.Now().Add(time.Hour), "status_429")
	rec.Quarantined(oddTarget, credAddr, time.Now().Add(time.Hour), "<script>\x00")
	for range 3 {
		rec.Attempt(proxy.AttemptEvent{Target: oddTarget, Addr: "10.0.0.2:3128", OK: true})
		rec.Request(proxy.RequestEvent{Target: oddTarget, Outcome: `<i>odd</i>`})
	}
	s, err := admin.New(admin.Options{
		Token: token, Targets: func() []*proxy.Target { return []*proxy.Target{target} }, Backend: backend, Recorder: rec,
		RefreshInterval: 500 * time.Millisecond,
		Probes: admin.ProbeFunc(func(addr string) (admin.ProbeResult, bool) {
			if addr == "10.0.0.2:3128" {
				return admin.ProbeResult{OK: false, Reason: "timeout", Latency: 1500 * time.Millisecond, At: time.Now()}, true
			}
			return admin.ProbeResult{}, false
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return s, srv
}

// checkEscaped asserts that none of the hostile strings became markup and
// that they show as text and attribute values, credentials stripped.
func checkEscaped(t *testing.T, doc string) {
	t.Helper()
	if strings.Contains(doc, "s3cretpass") || strings.Contains(doc, "puser") {
		t.Errorf("credentials on the page")
	}
	dom := testenv.ParseDOM(t, doc)
	if n := len(dom.All(testenv.Where("img"))); n != 0 {
		t.Errorf("%d injected <img> elements", n)
	}
	if n := len(dom.All(testenv.Where("script"))); n != 1 {
		t.Errorf("%d <script> elements, want only the page's own", n)
	}
	if n := len(dom.All(func(n *html.Node) bool {
		_, a := testenv.Attr(n, "onload")
		_, b := testenv.Attr(n, "onerror")
		return a || b
	})); n != 0 {
		t.Errorf("%d elements with event handler attributes", n)
	}
	if strings.Contains(doc, "<title>pwned") {
		t.Errorf("injected script ran")
	}
	targets := dom.All(testenv.Where("div", "class", "target"))
	if len(targets) != 1 {
		t.Fatalf("%d targets drawn", len(targets))
	}
	if v, _ := testenv.Attr(targets[0], "data-target"); v != oddTarget {
		t.Errorf("data-target = %q", v)
	}
	odd := testenv.Under(targets[0]).All(testenv.Where("div", "data-ip", oddAddr))
	if len(odd) != 1 || !testenv.HasClass(odd[0], "state-quarantined") {
		t.Fatalf("odd IP box: %d", len(odd))
	}
	if !strings.Contains(testenv.Text(odd[0]), oddAddr) || !strings.Contains(testenv.Text(odd[0]), `<b>prov</b> / "reg"`) {
		t.Errorf("odd IP box text: %q", testenv.Text(odd[0]))
	}
	if len(testenv.Under(targets[0]).All(testenv.Where("div", "data-ip", "10.0.0.1:3128"))) != 1 {
		t.Errorf("IP with credentials not drawn by its host:port")
	}
	ok := testenv.Under(targets[0]).All(testenv.Where("div", "data-ip", "10.0.0.2:3128", "data-requests", "3"))
	if len(ok) != 1 || !strings.Contains(testenv.Text(ok[0]), "probe timeout 1500 ms") {
		t.Errorf("probed IP: %d boxes", len(ok))
	}
	ev := dom.All(testenv.Where("li", "data-kind", "quarantined", "data-target", oddTarget))
	if len(ev) != 2 {
		t.Errorf("%d quarantine events drawn, want 2", len(ev))
	}
	if len(dom.All(testenv.Where("li", "data-kind", "quarantined", "data-ip", "10.0.0.1:3128"))) != 1 {
		t.Errorf("event of the IP with credentials not drawn by its host:port")
	}
	if len(dom.All(testenv.Where("li", "data-outcome", "<i>odd</i>", "data-count", "3"))) != 1 {
		t.Errorf("odd outcome not in the legend")
	}
}

// TestPageEscapes renders the page on the server side.
func TestPageEscapes(t *testing.T) {
	_, srv := oddServer(t)
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	checkEscaped(t, string(b))
}

// TestPageEscapesInBrowser lets the page's script redraw everything from
// /api/status in headless Chromium, then checks the same.
func TestPageEscapesInBrowser(t *testing.T) {
	_, srv := oddServer(t)
	start := time.Now()
	doc := testenv.DumpDOM(t, srv.URL+loginLink(t, srv), 3*time.Second)
	t.Logf("chromium took %s", time.Since(start).Round(time.Millisecond))
	dom := testenv.ParseDOM(t, doc)
	body := dom.All(testenv.Where("body"))
	if len(body) != 1 {
		t.Fatalf("no body in:\n%.2000s", doc)
	}
	n, _ := testenv.Attr(body[0], "data-refreshes")
	if r, _ := strconv.Atoi(n); r < 1 {
		t.Fatalf("the page's script never redrew it (data-refreshes=%q):\n%.3000s", n, doc)
	}
	checkEscaped(t, doc)
}

// loginLink makes a one-time login link with the token (POST /api/login-link).
func loginLink(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.URL+"/api/login-link", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var link struct{ Path string }
	if err := json.NewDecoder(resp.Body).Decode(&link); err != nil || resp.StatusCode != 201 || !strings.HasPrefix(link.Path, "/login?ticket=") {
		t.Fatalf("POST /api/login-link: %d %v %+v", resp.StatusCode, err, link)
	}
	return link.Path
}
