package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/pool/memory"
	"github.com/proxy-hopper/proxy-hopper/pool/redis"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type authEnv struct {
	srv   *httptest.Server
	clock *fakeClock
	log   *syncBuffer
}

// newAuthEnv serves an admin server with one empty target over loopback,
// with a fake clock; opt adjusts the options.
func newAuthEnv(t *testing.T, tls bool, opt func(*admin.Options)) *authEnv {
	t.Helper()
	backend := memory.New(nil)
	t.Cleanup(func() { backend.Close() })
	e := &authEnv{clock: &fakeClock{t: time.Unix(1_800_000_000, 0)}, log: &syncBuffer{}}
	rec := admin.NewRecorder(e.clock.now, 0)
	p, err := pool.New(context.Background(), "web", []string{"10.0.0.1:3128"}, backend,
		pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: time.Hour, MaxQueueWait: time.Second},
		pool.Options{Logger: slog.New(slog.DiscardHandler), Hooks: pool.Hooks{
			QuarantinedWhy: func(addr string, until time.Time, cause string) { rec.Quarantined("web", addr, until, cause) },
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	target := &proxy.Target{Name: "web", Pool: p}
	o := admin.Options{
		Token: token, Targets: func() []*proxy.Target { return []*proxy.Target{target} }, Backend: backend,
		Now: e.clock.now, Logger: slog.New(slog.NewTextHandler(e.log, nil)), Recorder: rec,
	}
	if opt != nil {
		opt(&o)
	}
	s, err := admin.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if tls {
		e.srv = httptest.NewTLSServer(s.Handler())
	} else {
		e.srv = httptest.NewServer(s.Handler())
	}
	t.Cleanup(e.srv.Close)
	return e
}

// client is an HTTP client whose connections come from the loopback
// address src, with a cookie jar; it does not follow redirects.
func (e *authEnv) client(t *testing.T, src string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	tr := e.srv.Client().Transport.(*http.Transport).Clone()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	tr.DialContext = d.DialContext
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Jar: jar, Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func do(t *testing.T, c *http.Client, method, u, bearer string, body io.Reader, ctype string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, body)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func login(t *testing.T, c *http.Client, base, tok string) *http.Response {
	t.Helper()
	resp, _ := do(t, c, "POST", base+"/login", "", strings.NewReader(url.Values{"token": {tok}}.Encode()), "application/x-www-form-urlencoded")
	return resp
}

// TestAdminTokenGuessingLimited: wrong tokens from one source are answered
// 401 up to the burst, then 429 with Retry-After, the right token included
// (a limited source's guesses are not checked), through the header and the
// login form alike; another source is not affected; the source refills
// with time; failures are logged with the source, boundedly.
func TestAdminTokenGuessingLimited(t *testing.T) {
	e := newAuthEnv(t, false, nil)
	guesser, other := e.client(t, "127.0.0.7"), e.client(t, "127.0.0.8")
	api := e.srv.URL + "/api/targets"
	for i := range 10 {
		if resp, _ := do(t, guesser, "GET", api, fmt.Sprintf("guess-%d", i), nil, ""); resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d, want 401", i, resp.StatusCode)
		}
	}
	for i := range 200 {
		resp, body := do(t, guesser, "GET", api, fmt.Sprintf("more-%d", i), nil, "")
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "too_many_failures") {
			t.Fatalf("guess %d past the limit: %d %q %s, want 429 with Retry-After", i, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	}
	if resp, _ := do(t, guesser, "GET", api, token, nil, ""); resp.StatusCode != 429 {
		t.Fatalf("right token from a limited source: %d, want 429 (not checked)", resp.StatusCode)
	}
	if resp := login(t, guesser, e.srv.URL, token); resp.StatusCode != 429 {
		t.Fatalf("login form from a limited source: %d, want 429", resp.StatusCode)
	}
	if resp, _ := do(t, other, "GET", api, token, nil, ""); resp.StatusCode != 200 {
		t.Fatalf("another source with the right token: %d", resp.StatusCode)
	}
	// The login form counts too.
	for range 10 {
		login(t, other, e.srv.URL, "wrong-token-from-the-form")
	}
	if resp := login(t, other, e.srv.URL, token); resp.StatusCode != 429 {
		t.Fatalf("login after 10 wrong ones: %d, want 429", resp.StatusCode)
	}
	// One more attempt per 6s once the burst is used.
	e.clock.add(6 * time.Second)
	if resp, _ := do(t, guesser, "GET", api, token, nil, ""); resp.StatusCode != 200 {
		t.Fatalf("right token after the refill: %d", resp.StatusCode)
	}
	logs := e.log.String()
	if !strings.Contains(logs, "admin token authentication failed") || !strings.Contains(logs, "source=127.0.0.7") {
		t.Fatalf("failures not logged with their source:\n%s", logs)
	}
	if strings.Contains(logs, "guess-") || strings.Contains(logs, token) {
		t.Fatalf("a token reached the log:\n%s", logs)
	}
	if n := strings.Count(logs, "authentication failed"); n > 10 {
		t.Fatalf("%d failure lines for 223 failures: the log is not limited", n)
	}
}

// TestAdminSessions: each login gets its own random session id, never the
// token; logout ends it on the server (a copy of the cookie stops
// working); a session expires after sessionTtl; Secure over TLS, or
// always with SecureCookie.
func TestAdminSessions(t *testing.T) {
	for _, tc := range []struct{ tls, secureOpt, wantSecure bool }{
		{false, false, false}, {true, false, true}, {false, true, true},
	} {
		tls := tc.tls
		t.Run(fmt.Sprintf("tls=%v,secureCookie=%v", tc.tls, tc.secureOpt), func(t *testing.T) {
			e := newAuthEnv(t, tls, func(o *admin.Options) { o.SessionTTL, o.SecureCookie = time.Hour, tc.secureOpt })
			u, _ := url.Parse(e.srv.URL)
			cookie := func(c *http.Client) *http.Cookie {
				resp := login(t, c, e.srv.URL, token)
				if resp.StatusCode != 303 {
					t.Fatalf("login: %d", resp.StatusCode)
				}
				for _, ck := range resp.Cookies() {
					if ck.Name == admin.CookieName {
						return ck
					}
				}
				t.Fatal("no session cookie")
				return nil
			}
			a, b := e.client(t, "127.0.0.1"), e.client(t, "127.0.0.1")
			ca, cb := cookie(a), cookie(b)
			if ca.Value == cb.Value || len(ca.Value) < 22 || strings.Contains(ca.Value, token) {
				t.Fatalf("session ids %q and %q: want distinct random ids", ca.Value, cb.Value)
			}
			if !ca.HttpOnly || ca.SameSite != http.SameSiteStrictMode || ca.Secure != tc.wantSecure || ca.MaxAge != 3600 {
				t.Fatalf("cookie attributes: %+v (%+v)", ca, tc)
			}
			get := func(c *http.Client) int {
				resp, _ := do(t, c, "GET", e.srv.URL+"/api/targets", "", nil, "")
				return resp.StatusCode
			}
			if get(a) != 200 || get(b) != 200 {
				t.Fatal("sessions do not read")
			}
			// A stolen copy of a's cookie, used after a logs out.
			thief := e.client(t, "127.0.0.1")
			thief.Jar.SetCookies(u, []*http.Cookie{{Name: admin.CookieName, Value: ca.Value}})
			if resp, _ := do(t, a, "POST", e.srv.URL+"/logout", "", nil, ""); resp.StatusCode != 303 {
				t.Fatalf("logout: %d", resp.StatusCode)
			}
			if get(thief) != 401 || get(a) != 401 {
				t.Fatal("a session survived logout")
			}
			if get(b) != 200 {
				t.Fatal("logout of a ended b's session")
			}
			e.clock.add(time.Hour)
			if get(b) != 401 {
				t.Fatal("a session outlived sessionTtl")
			}
		})
	}
}

// TestAdminTokenInURLRefused: /?token= no longer logs in (the token would
// sit in history and logs); a one-time login link does, once.
func TestAdminTokenInURLRefused(t *testing.T) {
	e := newAuthEnv(t, false, nil)
	c := e.client(t, "127.0.0.1")
	resp, body := do(t, c, "GET", e.srv.URL+"/?token="+url.QueryEscape(token), "", nil, "")
	if resp.StatusCode != 400 || len(resp.Cookies()) != 0 || !strings.Contains(body, "not accepted") {
		t.Fatalf("/?token=: %d cookies=%v: %.300s", resp.StatusCode, resp.Cookies(), body)
	}
	if _, body := do(t, c, "POST", e.srv.URL+"/api/login-link", "", nil, ""); !strings.Contains(body, "missing token: send Authorization: Bearer") {
		t.Fatalf("login link without the token: %s", body)
	}
	_, body = do(t, c, "POST", e.srv.URL+"/api/login-link", token, nil, "")
	var link struct{ Path string }
	json.Unmarshal([]byte(body), &link)
	if !strings.HasPrefix(link.Path, "/login?ticket=") || strings.Contains(link.Path, token) {
		t.Fatalf("login link: %s", body)
	}
	if resp, _ := do(t, c, "GET", e.srv.URL+link.Path, "", nil, ""); resp.StatusCode != 303 || len(resp.Cookies()) != 1 {
		t.Fatalf("login link: %d %v", resp.StatusCode, resp.Cookies())
	}
	if resp, _ := do(t, c, "GET", e.srv.URL+"/", "", nil, ""); resp.StatusCode != 200 {
		t.Fatalf("page after the login link: %d", resp.StatusCode)
	}
	if resp, _ := do(t, e.client(t, "127.0.0.1"), "GET", e.srv.URL+link.Path, "", nil, ""); resp.StatusCode != 401 {
		t.Fatalf("login link used twice: %d", resp.StatusCode)
	}
	_, body = do(t, c, "POST", e.srv.URL+"/api/login-link", token, nil, "")
	json.Unmarshal([]byte(body), &link)
	e.clock.add(time.Minute)
	if resp, _ := do(t, e.client(t, "127.0.0.1"), "GET", e.srv.URL+link.Path, "", nil, ""); resp.StatusCode != 401 {
		t.Fatalf("expired login link: %d", resp.StatusCode)
	}
}

// TestReadyzHidesAddresses: with Redis down, /readyz without the token
// says which check failed but not Redis' address; with the token it does.
func TestReadyzHidesAddresses(t *testing.T) {
	port := testenv.FreePort(t, "127.0.0.1") // nothing listens there
	rb, err := redis.New(fmt.Sprintf("redis://127.0.0.1:%d/0", port), redis.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rb.Close() })
	e := newAuthEnv(t, false, func(o *admin.Options) { o.Backend, o.BackendName, o.CheckTimeout = rb, "redis", time.Second })
	c := e.client(t, "127.0.0.1")
	addr := fmt.Sprint(port)
	resp, body := do(t, c, "GET", e.srv.URL+"/readyz", "", nil, "")
	if resp.StatusCode != 503 || !strings.Contains(body, "backend unreachable") || strings.Contains(body, addr) || strings.Contains(body, "127.0.0.1") {
		t.Fatalf("readyz without the token: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, c, "GET", e.srv.URL+"/readyz", token, nil, "")
	if resp.StatusCode != 503 || !strings.Contains(body, addr) {
		t.Fatalf("readyz with the token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do(t, c, "GET", e.srv.URL+"/readyz", "wrong-token", nil, ""); resp.StatusCode != 401 {
		t.Fatalf("readyz with a wrong token: %d", resp.StatusCode)
	}
}
