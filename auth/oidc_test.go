package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func oidcAuth(t *testing.T, clock *fakeClock, o OIDC, roles map[string]Role) *Authenticator {
	t.Helper()
	a, err := New(Config{Enabled: true, JWTSecret: "s", OIDC: &o, Roles: roles, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestOIDCTokens: tokens of a real local issuer, RSA and ECDSA, checked
// for signature, iss, aud, exp and the roles claim as proxy-hopper maps it.
func TestOIDCTokens(t *testing.T) {
	is := testenv.NewOIDCIssuer(t)
	rk, ek := testenv.RSAKey(t, "r1"), testenv.ECKey(t, "e1")
	is.Serve(rk, ek)
	stranger := testenv.RSAKey(t, "r1") // same kid, a key the issuer never published
	clock := &fakeClock{t: time.Now()}
	now := clock.Now().Unix()
	roles := map[string]Role{"scraper": {Permissions: []string{"read"}, Targets: []string{"api"}}}
	withAud := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL, Audience: "proxy-hopper"}, roles)
	noAud := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL}, roles)
	custom := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL, Audience: "proxy-hopper", RolesClaim: "groups"}, roles)
	base := func(extra map[string]any) map[string]any {
		c := map[string]any{"iss": is.Srv.URL, "sub": "svc-1", "aud": "proxy-hopper", "exp": now + 300, "iat": now}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	for _, c := range []struct {
		name    string
		a       *Authenticator
		token   string
		reason  string
		role    string
		api     bool // may use target api
		web     bool // may use target web
		canRead bool
	}{
		{"rsa operator", withAud, rk.Sign(t, base(map[string]any{"proxy_hopper_role": "operator"})), "", "operator", true, true, true},
		{"ecdsa admin", withAud, ek.Sign(t, base(map[string]any{"proxy_hopper_role": "admin"})), "", "admin", true, true, true},
		{"no role claim: viewer", withAud, rk.Sign(t, base(nil)), "", "viewer", true, true, true},
		{"custom role", withAud, rk.Sign(t, base(map[string]any{"proxy_hopper_role": "scraper"})), "", "scraper", true, false, true},
		{"unknown role", withAud, rk.Sign(t, base(map[string]any{"proxy_hopper_role": "ghost"})), "", "ghost", false, false, false},
		{"role list", withAud, rk.Sign(t, base(map[string]any{"proxy_hopper_role": []string{"ghost", "scraper"}})), "", "ghost,scraper", true, false, true},
		{"role not a string", withAud, rk.Sign(t, base(map[string]any{"proxy_hopper_role": 7})), ReasonInvalid, "", false, false, false},
		{"rolesClaim groups", custom, rk.Sign(t, base(map[string]any{"groups": "operator", "proxy_hopper_role": "admin"})), "", "operator", true, true, true},
		{"aud list", withAud, rk.Sign(t, base(map[string]any{"aud": []string{"x", "proxy-hopper"}})), "", "viewer", true, true, true},
		{"wrong aud", withAud, rk.Sign(t, base(map[string]any{"aud": "other"})), ReasonInvalid, "", false, false, false},
		{"no aud", withAud, rk.Sign(t, base(map[string]any{"aud": nil})), ReasonInvalid, "", false, false, false},
		{"aud without oidc.audience", noAud, rk.Sign(t, base(nil)), ReasonInvalid, "", false, false, false},
		{"no aud, no oidc.audience", noAud, rk.Sign(t, base(map[string]any{"aud": nil})), "", "viewer", true, true, true},
		{"expired", withAud, rk.Sign(t, base(map[string]any{"exp": now - 1})), ReasonExpired, "", false, false, false},
		{"no exp", withAud, rk.Sign(t, base(map[string]any{"exp": nil})), ReasonExpired, "", false, false, false},
		{"wrong iss", withAud, rk.Sign(t, base(map[string]any{"iss": "http://127.0.0.9"})), ReasonInvalid, "", false, false, false},
		{"unpublished key", withAud, stranger.Sign(t, base(nil)), ReasonInvalid, "", false, false, false},
		{"alg none", withAud, algNone(rk.Sign(t, base(nil))), ReasonInvalid, "", false, false, false},
		{"local HS256 still works", withAud, SignJWT("s", map[string]any{"sub": "u", "role": "operator", "exp": now + 60}), "", "operator", true, true, true},
		{"HS256 with the issuer's claims", withAud, SignJWT("wrong", base(nil)), ReasonInvalid, "", false, false, false},
	} {
		p, err := c.a.Authenticate(c.token)
		if got := Reason(err); got != c.reason {
			t.Errorf("%s: reason %q (%v), want %q", c.name, got, err, c.reason)
			continue
		}
		if err != nil {
			if strings.Contains(err.Error(), c.token) {
				t.Errorf("%s: error holds the token", c.name)
			}
			continue
		}
		if p.Role != c.role || (p.Kind == "oidc") == strings.HasPrefix(c.name, "local") {
			t.Errorf("%s: kind %q role %q, want role %q", c.name, p.Kind, p.Role, c.role)
		}
		if p.Kind == "oidc" && p.Name != "svc-1" {
			t.Errorf("%s: name %q, want the subject", c.name, p.Name)
		}
		if (p.Allows("api") == nil) != c.api || (p.Allows("web") == nil) != c.web || p.Can("read") != c.canRead {
			t.Errorf("%s: api %v web %v read %v", c.name, p.Allows("api"), p.Allows("web"), p.Can("read"))
		}
	}
}

// TestOIDCKeyRotation: the issuer swaps its keys mid-test (RSA to ECDSA
// and back to a new RSA key); a token of a new key is accepted once the
// agent may fetch again, a token of a withdrawn key is refused.
func TestOIDCKeyRotation(t *testing.T) {
	is := testenv.NewOIDCIssuer(t)
	k1, k2, k3 := testenv.RSAKey(t, "k1"), testenv.ECKey(t, "k2"), testenv.RSAKey(t, "k3")
	is.Serve(k1)
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL, Audience: "ph", MinRefreshInterval: 10 * time.Second}, nil)
	tok := func(s *testenv.OIDCKey) string {
		now := clock.Now().Unix()
		return s.Sign(t, map[string]any{"iss": is.Srv.URL, "aud": "ph", "sub": s.Kid, "exp": now + 3600, "proxy_hopper_role": "admin"})
	}
	check := func(step string, s *testenv.OIDCKey, ok bool) {
		t.Helper()
		p, err := a.Authenticate(tok(s))
		if (err == nil) != ok {
			t.Fatalf("%s: token of %s: %v, want ok=%v", step, s.Kid, err, ok)
		}
		if ok && p.Name != s.Kid {
			t.Fatalf("%s: subject %q", step, p.Name)
		}
	}
	check("start", k1, true)
	is.Serve(k1, k2) // k2 published
	check("k2 right after a fetch", k2, false)
	clock.Add(11 * time.Second)
	check("k2 after the minimum interval", k2, true)
	check("k1 still published", k1, true)
	is.Serve(k3) // k1 and k2 withdrawn
	clock.Add(11 * time.Second)
	check("k3", k3, true)
	clock.Add(11 * time.Second)
	check("withdrawn k1", k1, false)
	check("withdrawn k2", k2, false)
	// The keys are fetched again after RefreshEvery even when every kid
	// is known: a key withdrawn under a known kid stops working.
	k3b := testenv.RSAKey(t, "k3")
	is.Serve(k3b)
	check("old k3 before the refresh", k3, true)
	clock.Add(DefaultOIDCRefreshEvery)
	check("old k3 after the refresh", k3, false)
	check("new k3", k3b, true)
}

// TestOIDCUnknownKidFlood: tokens naming keys the issuer never had, sent
// at once and again and again, make at most one fetch per minimum interval.
func TestOIDCUnknownKidFlood(t *testing.T) {
	is := testenv.NewOIDCIssuer(t)
	good := testenv.RSAKey(t, "good")
	is.Serve(good)
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL, Audience: "ph"}, nil)
	now := clock.Now().Unix()
	claims := map[string]any{"iss": is.Srv.URL, "aud": "ph", "sub": "x", "exp": now + 3600}
	if _, err := a.Authenticate(good.Sign(t, claims)); err != nil {
		t.Fatal(err)
	}
	before := is.Hits()
	bogus := make([]string, 50)
	for i := range bogus {
		s := *good
		s.Kid = fmt.Sprintf("bogus-%d", i)
		bogus[i] = s.Sign(t, claims)
	}
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := a.Authenticate(bogus[i%len(bogus)]); err == nil {
					t.Error("a token of an unknown key was accepted")
				}
			}()
		}
		wg.Wait()
		clock.Add(DefaultOIDCMinRefresh)
	}
	// Three rounds, each at most one fetch (discovery + JWKS).
	if got := is.Hits() - before; got > 6 {
		t.Errorf("600 tokens of unknown keys made %d requests to the issuer, want at most 6", got)
	}
	if _, err := a.Authenticate(good.Sign(t, claims)); err != nil {
		t.Errorf("good token after the flood: %v", err)
	}
}

// TestOIDCIssuerFailures: an issuer that is down, lies about its name,
// sends a huge JWKS, or hangs refuses the tokens, and a later fetch (after
// the minimum interval) recovers.
func TestOIDCIssuerFailures(t *testing.T) {
	is := testenv.NewOIDCIssuer(t)
	k := testenv.ECKey(t, "k")
	is.Serve(k)
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL, Audience: "ph", FetchTimeout: 500 * time.Millisecond, MaxResponseBytes: 64 << 10}, nil)
	tok := k.Sign(t, map[string]any{"iss": is.Srv.URL, "aud": "ph", "sub": "x", "exp": clock.Now().Unix() + 3600})
	fails := func(step string, setup func()) {
		t.Helper()
		setup()
		clock.Add(DefaultOIDCRefreshEvery) // every step starts a fetch
		if _, err := a.Authenticate(tok); err == nil || Reason(err) != ReasonInvalid {
			t.Errorf("%s: %v, want refused as invalid", step, err)
		}
	}
	fails("issuer mismatch", func() { is.Mu.Lock(); is.DiscIssuer = "http://127.0.0.9"; is.Mu.Unlock() })
	fails("JWKS over the size limit", func() {
		is.Mu.Lock()
		is.DiscIssuer = ""
		// A valid JWKS but for its size.
		set, _ := json.Marshal(jose.JSONWebKeySet{Keys: is.Keys})
		is.JWKSBody = append(set[:len(set)-1], []byte(`,"pad":"`+strings.Repeat("x", 128<<10)+`"}`)...)
		is.Mu.Unlock()
	})
	fails("JWKS without a usable key", func() { is.Mu.Lock(); is.JWKSBody = []byte(`{"keys":[{"kty":"oct","k":"AAAA"}]}`); is.Mu.Unlock() })
	block := make(chan struct{})
	start := time.Now()
	fails("hanging JWKS", func() { is.Mu.Lock(); is.JWKSBody, is.Block = nil, block; is.Mu.Unlock() })
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("a hanging issuer held the token %s (fetch timeout 0.5s)", el)
	}
	close(block)
	is.Mu.Lock()
	is.Block = nil
	is.Mu.Unlock()
	// Within the minimum interval nothing is fetched, so still refused;
	// after it, the issuer's keys are back.
	if _, err := a.Authenticate(tok); err == nil {
		t.Errorf("accepted without a fetch")
	}
	clock.Add(DefaultOIDCMinRefresh)
	if _, err := a.Authenticate(tok); err != nil {
		t.Errorf("after the issuer recovered: %v", err)
	}
	// Once keys are known, a failing issuer leaves them in use.
	is.Mu.Lock()
	is.DiscIssuer = "http://127.0.0.9"
	is.Mu.Unlock()
	clock.Add(DefaultOIDCRefreshEvery)
	if _, err := a.Authenticate(tok); err != nil {
		t.Errorf("known keys dropped when a refresh failed: %v", err)
	}
}

// TestOIDCCallerDeadline: a caller whose context ends stops waiting for
// a fetch, while the fetch goes on for the others.
func TestOIDCCallerDeadline(t *testing.T) {
	is := testenv.NewOIDCIssuer(t)
	k := testenv.RSAKey(t, "k")
	is.Serve(k)
	block := make(chan struct{})
	is.Block = block
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.Srv.URL, Audience: "ph"}, nil)
	tok := k.Sign(t, map[string]any{"iss": is.Srv.URL, "aud": "ph", "sub": "x", "exp": clock.Now().Unix() + 3600})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := a.AuthenticateContext(ctx, tok); done <- err }()
	other := make(chan error, 1)
	go func() { _, err := a.AuthenticateContext(context.Background(), tok); other <- err }()
	for is.JWKSHits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err == nil {
		t.Errorf("cancelled caller got a principal")
	}
	close(block)
	if err := <-other; err != nil {
		t.Errorf("other caller: %v", err)
	}
}

func TestOIDCConfigRefused(t *testing.T) {
	for _, iss := range []string{"", "auth.example.invalid", "ftp://127.0.0.1/"} {
		if _, err := New(Config{Enabled: true, OIDC: &OIDC{Issuer: iss}}); err == nil || !strings.Contains(err.Error(), "auth.oidc.issuer") {
			t.Errorf("issuer %q: %v", iss, err)
		}
	}
}
