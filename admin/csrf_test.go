package admin_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

var csrfRE = regexp.MustCompile(`const csrf = "([^"]*)";`)

// pageSession logs c in with tok through the login form and returns the
// CSRF token the page gives its script, and whether it shows actions.
func pageSession(t *testing.T, c *http.Client, base, tok string) (csrf string, actions bool) {
	t.Helper()
	if resp := login(t, c, base, tok); resp.StatusCode != 303 {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	resp, doc := do(t, c, "GET", base+"/", "", nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("page: %d", resp.StatusCode)
	}
	m := csrfRE.FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("no csrf constant in the page:\n%.2000s", doc)
	}
	dom := testenv.ParseDOM(t, doc)
	return m[1], len(dom.All(testenv.Where("button", "data-action", "quarantine"))) > 0
}

// change sends a change with the session cookie of c and the given
// headers (name, value pairs); it returns the status and body.
func change(t *testing.T, c *http.Client, method, u string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b)
}

// TestPageChangesNeedCSRF: a session that may write changes the pool only
// with its own CSRF token in X-CSRF-Token, from this origin: the cookie
// alone, a missing, wrong or other session's token, a cross-site or
// cross-origin request, are refused (403) and change nothing; the refusals
// are logged without the token.
func TestPageChangesNeedCSRF(t *testing.T) {
	e := newAuthEnv(t, false, nil)
	a, b := e.client(t, "127.0.0.1"), e.client(t, "127.0.0.1")
	csrfA, actions := pageSession(t, a, e.srv.URL, token)
	csrfB, _ := pageSession(t, b, e.srv.URL, token)
	if len(csrfA) < 40 || csrfA == csrfB || !actions {
		t.Fatalf("csrf tokens %q %q (actions shown: %v): want distinct random tokens per session and actions", csrfA, csrfB, actions)
	}
	q := e.srv.URL + "/api/targets/web/ips/10.0.0.1:3128/quarantine"
	same := []string{"Origin", e.srv.URL, "Sec-Fetch-Site", "same-origin"}
	with := func(h []string, more ...string) []string { return append(append([]string{}, h...), more...) }
	for _, tc := range []struct {
		name string
		hdr  []string
		want string
	}{
		{"cookie alone", nil, "no Origin or Sec-Fetch-Site"},
		{"same origin, no token", same, "missing X-CSRF-Token"},
		{"wrong token", with(same, admin.CSRFHeader, "x"+csrfA[1:]), "wrong X-CSRF-Token"},
		{"another session's token", with(same, admin.CSRFHeader, csrfB), "wrong X-CSRF-Token"},
		{"cross-origin", []string{"Origin", "http://evil.example", admin.CSRFHeader, csrfA}, "cross-origin"},
		{"cross-origin, same host other port", []string{"Origin", "http://127.0.0.1:1", admin.CSRFHeader, csrfA}, "cross-origin"},
		{"cross-site fetch", []string{"Sec-Fetch-Site", "cross-site", admin.CSRFHeader, csrfA}, "cross-site"},
		{"same-site fetch", []string{"Sec-Fetch-Site", "same-site", "Origin", e.srv.URL, admin.CSRFHeader, csrfA}, "cross-site"},
		{"opaque origin only", []string{"Origin", "null", admin.CSRFHeader, csrfA}, "no Origin or Sec-Fetch-Site"},
	} {
		code, body := change(t, a, "POST", q, tc.hdr...)
		if code != 403 || !strings.Contains(body, tc.want) || !strings.Contains(body, `"csrf"`) {
			t.Errorf("%s: %d %.200s, want 403 %q", tc.name, code, body, tc.want)
		}
	}
	_, st := do(t, a, "GET", e.srv.URL+"/api/targets/web", "", nil, "")
	if !strings.Contains(st, `"state": "available"`) {
		t.Fatalf("a refused change changed the pool: %s", st)
	}
	// From the page: the right token, this origin (Origin null, as under
	// Referrer-Policy no-referrer, with Sec-Fetch-Site same-origin too).
	if code, body := change(t, a, "POST", q, with(same, admin.CSRFHeader, csrfA)...); code != 200 {
		t.Fatalf("quarantine from the page: %d %s", code, body)
	}
	var tv admin.TargetView
	_, st = do(t, a, "GET", e.srv.URL+"/api/targets/web", "", nil, "")
	json.Unmarshal([]byte(st), &tv)
	if len(tv.IPs) != 1 || tv.IPs[0].State != "quarantined" || tv.IPs[0].QuarantineReason != admin.CauseAdmin || tv.IPs[0].ReasonText != "admin action" {
		t.Fatalf("after the quarantine: %s", st)
	}
	rel := e.srv.URL + "/api/targets/web/ips/10.0.0.1:3128/release"
	if code, body := change(t, b, "POST", rel, "Origin", "null", "Sec-Fetch-Site", "same-origin", admin.CSRFHeader, csrfB); code != 200 {
		t.Fatalf("release from b's page: %d %s", code, body)
	}
	// Logged out, the session's token is worth nothing.
	if resp, _ := do(t, a, "POST", e.srv.URL+"/logout", "", nil, ""); resp.StatusCode != 303 {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if code, _ := change(t, a, "POST", q, with(same, admin.CSRFHeader, csrfA)...); code != 401 {
		t.Fatalf("change after logout: %d, want 401", code)
	}
	// A cross-site logout is refused.
	if code, _ := change(t, b, "POST", e.srv.URL+"/logout", "Sec-Fetch-Site", "cross-site"); code != 403 {
		t.Fatalf("cross-site logout: %d, want 403", code)
	}
	logs := e.log.String()
	if !strings.Contains(logs, "admin change refused") || strings.Contains(logs, csrfA) || strings.Contains(logs, csrfB) {
		t.Fatalf("refusals not logged, or a token logged:\n%s", logs)
	}
}

// TestViewerSessionCannotChange: a session started with a viewer's JWT
// reads and shows no actions, and its changes are refused even with every
// header right; one started with a JWT whose role has write can change.
func TestViewerSessionCannotChange(t *testing.T) {
	var au *auth.Authenticator
	e := newAuthEnv(t, false, withAuth(t, &au, false))
	viewer := auth.SignJWT("admin-test-secret-0123456789", map[string]any{"sub": "v", "role": "viewer", "exp": time.Now().Add(time.Hour).Unix()})
	admTok := auth.SignJWT("admin-test-secret-0123456789", map[string]any{"sub": "r", "role": "admin", "exp": time.Now().Add(time.Hour).Unix()})
	v, w := e.client(t, "127.0.0.1"), e.client(t, "127.0.0.2")
	csrfV, actionsV := pageSession(t, v, e.srv.URL, viewer)
	csrfW, actionsW := pageSession(t, w, e.srv.URL, admTok)
	if csrfV != "" || actionsV {
		t.Fatalf("viewer's page: csrf %q, actions %v: want neither", csrfV, actionsV)
	}
	if csrfW == "" || !actionsW {
		t.Fatal("admin JWT's page: no csrf token or actions")
	}
	q := e.srv.URL + "/api/targets/web/ips/10.0.0.1:3128/quarantine"
	for _, tok := range []string{csrfV, csrfW} {
		code, body := change(t, v, "POST", q, "Origin", e.srv.URL, "Sec-Fetch-Site", "same-origin", admin.CSRFHeader, tok)
		if code != 403 || !strings.Contains(body, "may only read") {
			t.Errorf("viewer session's change (csrf %.6q): %d %s, want 403", tok, code, body)
		}
	}
	if resp, _ := do(t, v, "GET", e.srv.URL+"/api/status", "", nil, ""); resp.StatusCode != 200 {
		t.Errorf("viewer session cannot read: %d", resp.StatusCode)
	}
	if code, body := change(t, w, "POST", q, "Origin", e.srv.URL, "Sec-Fetch-Site", "same-origin", admin.CSRFHeader, csrfW); code != 200 {
		t.Errorf("admin JWT session's change: %d %s", code, body)
	}
}

// TestStatusFilter: /api/status lists the IPs a state and substring pick,
// a window at a time, with the counts of all of them.
func TestStatusFilter(t *testing.T) {
	_, srv := oddServer(t)
	get := func(q string) (int, admin.StatusView) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/status"+q, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v admin.StatusView
		json.NewDecoder(resp.Body).Decode(&v)
		return resp.StatusCode, v
	}
	for _, tc := range []struct {
		q                   string
		matched, shown, off int
	}{
		{"", 3, 3, 0},
		{"?state=quarantined", 1, 1, 0},
		{"?state=available&limit=1", 2, 1, 0},
		{"?state=available&limit=1&offset=1", 2, 1, 1},
		{"?q=10.0.0.2", 1, 1, 0},
		{"?q=prov", 1, 1, 0},
		{"?offset=5", 3, 0, 5},
	} {
		code, v := get(tc.q)
		if code != 200 || len(v.Targets) != 1 {
			t.Fatalf("%s: %d", tc.q, code)
		}
		tv := v.Targets[0]
		if tv.Matched != tc.matched || len(tv.IPs) != tc.shown || tv.Offset != tc.off || tv.Counts["available"] != 2 || tv.Counts["quarantined"] != 1 {
			t.Errorf("%s: matched %d shown %d offset %d counts %v, want %d %d %d", tc.q, tv.Matched, len(tv.IPs), tv.Offset, tv.Counts, tc.matched, tc.shown, tc.off)
		}
	}
	for _, q := range []string{"?state=gone", "?limit=-1", "?offset=x", "?q=" + strings.Repeat("a", 101)} {
		if code, _ := get(q); code != 400 {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
}

// TestStatusVersionUptimeBytes: /api/status and the page carry the
// version, the uptime, and the gateway's byte counters per IP address;
// a counter read error is shown, not fatal.
func TestStatusVersionUptimeBytes(t *testing.T) {
	var fail atomic.Bool
	e := newAuthEnv(t, false, func(o *admin.Options) {
		o.Version = "v1.2.3-test"
		o.Started = o.Now().Add(-90 * time.Minute)
		o.Bytes = func() (map[netip.Addr]admin.ByteCounts, error) {
			if fail.Load() {
				return nil, errors.New("read ph_ip_stats: gone")
			}
			return map[netip.Addr]admin.ByteCounts{netip.MustParseAddr("10.0.0.1"): {In: 3 << 20, Out: 4096}}, nil
		}
	})
	c := e.client(t, "127.0.0.1")
	var v admin.StatusView
	_, body := do(t, c, "GET", e.srv.URL+"/api/status", token, nil, "")
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	ip := v.Targets[0].IPs[0]
	if v.Version != "v1.2.3-test" || v.UptimeSeconds != 5400 || !v.Gateway || ip.Bytes == nil || *ip.Bytes != (admin.ByteCounts{In: 3 << 20, Out: 4096}) {
		t.Fatalf("status: version %q uptime %d gateway %v bytes %+v", v.Version, v.UptimeSeconds, v.Gateway, ip.Bytes)
	}
	_, doc := do(t, c, "GET", e.srv.URL+"/", token, nil, "")
	for _, want := range []string{"version v1.2.3-test", "up 1h 30m 0s", `data-in="3145728" data-out="4096">in 3.0 MiB, out 4.0 KiB`} {
		if !strings.Contains(doc, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	fail.Store(true)
	_, body = do(t, c, "GET", e.srv.URL+"/api/status", token, nil, "")
	v = admin.StatusView{}
	json.Unmarshal([]byte(body), &v)
	if v.BytesError != "read ph_ip_stats: gone" || v.Targets[0].IPs[0].Bytes != nil {
		t.Fatalf("status with a failing counter read: %q %+v", v.BytesError, v.Targets[0].IPs[0].Bytes)
	}
}
