package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

func newStore(t *testing.T, cfg identity.Config) *identity.Store {
	t.Helper()
	s, err := identity.NewStore(cfg, identity.Options{Rand: rand.NewPCG(1, 2)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cookieOrigin sets a cookie naming the request's sequence number on
// /login and reports the Cookie and User-Agent it received on /echo.
func cookieOrigin(t *testing.T) *origin {
	var mu sync.Mutex
	n := 0
	return newOrigin(t, false, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/login":
			mu.Lock()
			n++
			v := n
			mu.Unlock()
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: fmt.Sprint(v), Path: "/"})
			fmt.Fprint(w, "ok")
		case "/429":
			w.WriteHeader(429)
		default:
			fmt.Fprintf(w, "cookie=%s ua=%s", r.Header.Get("Cookie"), r.Header.Get("User-Agent"))
		}
	})
}

// Cookies received through one IP are sent only through that IP.
func TestIdentityCookiesStayWithTheirIP(t *testing.T) {
	o := cookieOrigin(t)
	cfg := identity.DefaultConfig()
	cfg.Enabled = true
	e := newEnv(t, envOptions{upstreams: 2, identity: newStore(t, cfg)})
	get := func(path string) string {
		_, body := e.headerGet(t, o.URL, path, map[string]string{"User-Agent": "curl/8"})
		return body
	}
	get("/login") // IP A gets sid=1
	get("/login") // IP B gets sid=2
	a, b := get("/echo"), get("/echo")
	if !strings.Contains(a, "cookie=sid=1 ") || !strings.Contains(b, "cookie=sid=2 ") {
		t.Fatalf("cookies crossed IPs or were lost: A %q, B %q", a, b)
	}
	if strings.Contains(a, "curl/8") {
		t.Errorf("identity User-Agent did not replace the client's: %q", a)
	}
	// The client's own cookie is merged, not dropped.
	_, body := e.headerGet(t, o.URL, "/echo", map[string]string{"Cookie": "mine=x"})
	if !strings.Contains(body, "mine=x") || !strings.Contains(body, "sid=1") {
		t.Errorf("client cookie not merged with the jar's: %q", body)
	}
}

// Each rotation trigger gives a new identity: an empty jar (and, as the
// store picks one, a new profile).
func TestIdentityRotationTriggers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    func(*identity.Config)
		action func(t *testing.T, e *env, o *origin)
	}{
		{"429", func(c *identity.Config) { c.RotateOn429 = true }, func(t *testing.T, e *env, o *origin) {
			e.headerGet(t, o.URL, "/429", nil)
		}},
		{"request count", func(c *identity.Config) { c.RotateAfterRequests = 3 }, func(t *testing.T, e *env, o *origin) {
			e.headerGet(t, o.URL, "/echo", nil) // the third request
		}},
		{"quarantine release", func(c *identity.Config) { c.RotateOn429 = false }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := identity.DefaultConfig()
			cfg.Enabled = true
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			store := newStore(t, cfg)
			o := cookieOrigin(t)
			var hooks pool.Hooks
			if tc.action == nil {
				hooks.Released = func(addr string) { store.Rotate(addr, identity.ReasonQuarantine) }
			}
			e := newEnv(t, envOptions{upstreams: 1, identity: store, poolHooks: hooks,
				cfg: pool.Config{FailuresUntilQuarantine: 1, QuarantineTime: 300 * time.Millisecond, MaxQueueWait: 5 * time.Second}})
			addr := e.upstream[0].Addr
			e.headerGet(t, o.URL, "/login", nil)
			first := store.Get(addr)
			if _, body := e.headerGet(t, o.URL, "/echo", nil); !strings.Contains(body, "sid=1") {
				t.Fatalf("jar not used: %q", body)
			}
			if tc.action != nil {
				tc.action(t, e, o)
			} else {
				// A 502 from the upstream quarantines the only IP; its release
				// after 300ms rotates the identity.
				e.headerGet(t, o.URL, "/429", nil)
				// (Not just "not quarantined": right after the answer the
				// IP may still be in use, before its release quarantines it.)
				testenv.Eventually(t, 5*time.Second, func() error {
					snap, _ := e.pool().Snapshot(t.Context())
					if !(snap[0].State == pool.StateAvailable || snap[0].State == pool.StateCooling) {
						return errors.New("still waiting for quarantine release")
					}
					return nil
				})
			}
			second := store.Get(addr)
			if second.ID() == first.ID() {
				t.Fatalf("identity not rotated")
			}
			if len(second.Cookies(mustURL(t, o.URL))) != 0 {
				t.Errorf("rotated identity kept the old jar")
			}
			if _, body := e.headerGet(t, o.URL, "/echo", nil); strings.Contains(body, "sid=") {
				t.Errorf("old cookie sent after rotation: %q", body)
			}
		})
	}
}

// A fresh identity with warm-up sends GET <path> through the same IP
// before the real request, once.
func TestIdentityWarmup(t *testing.T) {
	cfg := identity.DefaultConfig()
	cfg.Enabled = true
	cfg.Warmup = identity.Warmup{Enabled: true, Path: "/login"}
	o := cookieOrigin(t)
	e := newEnv(t, envOptions{upstreams: 1, identity: newStore(t, cfg)})
	_, body := e.headerGet(t, o.URL, "/echo", nil)
	if !strings.Contains(body, "sid=1") {
		t.Fatalf("warm-up cookie not sent with the first request: %q", body)
	}
	e.headerGet(t, o.URL, "/echo", nil)
	var paths []string
	for _, r := range o.requests() {
		paths = append(paths, r.URL.Path)
	}
	if strings.Join(paths, ",") != "/login,/echo,/echo" {
		t.Errorf("origin saw %v, want one warm-up then the requests", paths)
	}
}

// Header order on the wire is the profile's (observed at a raw TLS origin,
// since the tunnel passes the agent's bytes through untouched).
func TestIdentityHeaderOrder(t *testing.T) {
	cert := newOrigin(t, true, nil) // borrowed for its certificate
	l, err := tls.Listen("tcp", "127.0.0.1:0", cert.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	names := make(chan []string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		var got []string
		for {
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
			if name, _, ok := strings.Cut(line, ":"); ok {
				got = append(got, name)
			}
		}
		names <- got
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	}()
	cfg := identity.DefaultConfig()
	cfg.Enabled, cfg.Profile = true, "chrome-windows"
	e := newEnv(t, envOptions{upstreams: 1, identity: newStore(t, cfg), tls: caOf(cert)})
	_, port, _ := net.SplitHostPort(l.Addr().String())
	resp, _ := e.headerGet(t, "https://127.0.0.1:"+port, "/h", map[string]string{"X-Custom": "1"})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := <-names
	p, _ := identity.ProfileByName("chrome-windows")
	var want []string
	for _, h := range p.HeadersFor(mustURL(t, "https://127.0.0.1:"+port+"/h")) {
		want = append(want, h.Name)
	}
	// The profile's headers appear in the profile's order.
	i := 0
	for _, n := range got {
		if i < len(want) && strings.EqualFold(n, want[i]) {
			i++
		}
	}
	if i != len(want) {
		t.Errorf("wire order %v does not follow the profile's %v", got, want)
	}
}

// With auth on, each principal has its own cookie jar on an IP: a session
// cookie key A received is never sent on key B's request through the same
// (only) IP, and A keeps its own; the identity (profile) stays the IP's.
func TestIdentityCookiesStayWithTheirPrincipal(t *testing.T) {
	o := cookieOrigin(t)
	cfg := identity.DefaultConfig()
	cfg.Enabled = true
	store := newStore(t, cfg)
	authn := mustAuth(t, auth.Config{Enabled: true, APIKeys: []auth.APIKey{
		{Name: "ci", Key: "key-ci", Targets: []string{"*"}},
		{Name: "scraper", Key: "key-scraper", Targets: []string{"*"}},
	}})
	e := newEnv(t, envOptions{upstreams: 1, identity: store, opts: Options{Auth: authn},
		cfg: pool.Config{MinRequestInterval: 0}})
	get := func(key, path string) string {
		resp, body := e.headerGet(t, o.URL, path, map[string]string{HeaderAuth: "Bearer " + key})
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", key, path, resp.StatusCode, body)
		}
		return body
	}
	get("key-ci", "/login") // ci's jar gets sid=1
	if body := get("key-scraper", "/echo"); strings.Contains(body, "sid=") {
		t.Fatalf("key scraper was sent key ci's cookie: %q", body)
	}
	get("key-scraper", "/login") // scraper's own: sid=2
	ci, scraper := get("key-ci", "/echo"), get("key-scraper", "/echo")
	if !strings.Contains(ci, "cookie=sid=1 ") || !strings.Contains(scraper, "cookie=sid=2 ") {
		t.Fatalf("jars mixed or lost: ci %q, scraper %q", ci, scraper)
	}
	// One IP, one persona: both principals are sent its User-Agent.
	if uaOf(ci) != uaOf(scraper) || uaOf(ci) == "" {
		t.Errorf("principals got different personas on one IP: %q vs %q", ci, scraper)
	}
	if n := store.Get(e.upstream[0].Addr).Sessions(); n != 2 {
		t.Errorf("%d sessions on the IP, want 2", n)
	}
}

func uaOf(body string) string {
	_, ua, _ := strings.Cut(body, " ua=")
	return ua
}
