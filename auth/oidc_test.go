package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// issuer is a local OpenID Connect issuer on loopback: a discovery
// document and a JWKS whose keys the test changes at will.
type issuer struct {
	srv        *httptest.Server
	mu         sync.Mutex
	keys       []jose.JSONWebKey // served (public)
	jwksBody   []byte            // when set, served instead of keys
	discIssuer string            // when set, the discovery document's issuer
	block      chan struct{}     // when set, JWKS requests wait on it
	discHits   atomic.Int64
	jwksHits   atomic.Int64
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	is := &issuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.discHits.Add(1)
		is.mu.Lock()
		iss := is.discIssuer
		is.mu.Unlock()
		if iss == "" {
			iss = is.srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": iss, "jwks_uri": is.srv.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"}})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		is.jwksHits.Add(1)
		is.mu.Lock()
		block, body, keys := is.block, is.jwksBody, is.keys
		is.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
				return
			}
		}
		if body != nil {
			_, _ = w.Write(body)
			return
		}
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: keys})
	})
	is.srv = httptest.NewServer(mux) // 127.0.0.1
	t.Cleanup(is.srv.Close)
	return is
}

// serve makes the JWKS hold exactly the public halves of keys.
func (is *issuer) serve(keys ...*signer) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = nil
	for _, k := range keys {
		is.keys = append(is.keys, jose.JSONWebKey{Key: k.public, KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
	}
}

func (is *issuer) hits() int64 { return is.discHits.Load() + is.jwksHits.Load() }

// signer is one key of the issuer.
type signer struct {
	kid    string
	alg    jose.SignatureAlgorithm
	key    any
	public any
}

func rsaSigner(t *testing.T, kid string) *signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, alg: jose.RS256, key: k, public: &k.PublicKey}
}

func ecSigner(t *testing.T, kid string) *signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, alg: jose.ES256, key: k, public: &k.PublicKey}
}

// sign makes a compact JWS of claims with s (its kid in the header).
func (s *signer) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if s.kid != "" {
		opts = opts.WithHeader("kid", s.kid)
	}
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: s.key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := sg.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

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
	is := newIssuer(t)
	rk, ek := rsaSigner(t, "r1"), ecSigner(t, "e1")
	is.serve(rk, ek)
	stranger := rsaSigner(t, "r1") // same kid, a key the issuer never published
	clock := &fakeClock{t: time.Now()}
	now := clock.Now().Unix()
	roles := map[string]Role{"scraper": {Permissions: []string{"read"}, Targets: []string{"api"}}}
	withAud := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL, Audience: "proxy-hopper"}, roles)
	noAud := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL}, roles)
	custom := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL, Audience: "proxy-hopper", RolesClaim: "groups"}, roles)
	base := func(extra map[string]any) map[string]any {
		c := map[string]any{"iss": is.srv.URL, "sub": "svc-1", "aud": "proxy-hopper", "exp": now + 300, "iat": now}
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
		{"rsa operator", withAud, rk.sign(t, base(map[string]any{"proxy_hopper_role": "operator"})), "", "operator", true, true, true},
		{"ecdsa admin", withAud, ek.sign(t, base(map[string]any{"proxy_hopper_role": "admin"})), "", "admin", true, true, true},
		{"no role claim: viewer", withAud, rk.sign(t, base(nil)), "", "viewer", true, true, true},
		{"custom role", withAud, rk.sign(t, base(map[string]any{"proxy_hopper_role": "scraper"})), "", "scraper", true, false, true},
		{"unknown role", withAud, rk.sign(t, base(map[string]any{"proxy_hopper_role": "ghost"})), "", "ghost", false, false, false},
		{"role list", withAud, rk.sign(t, base(map[string]any{"proxy_hopper_role": []string{"ghost", "scraper"}})), "", "ghost,scraper", true, false, true},
		{"role not a string", withAud, rk.sign(t, base(map[string]any{"proxy_hopper_role": 7})), ReasonInvalid, "", false, false, false},
		{"rolesClaim groups", custom, rk.sign(t, base(map[string]any{"groups": "operator", "proxy_hopper_role": "admin"})), "", "operator", true, true, true},
		{"aud list", withAud, rk.sign(t, base(map[string]any{"aud": []string{"x", "proxy-hopper"}})), "", "viewer", true, true, true},
		{"wrong aud", withAud, rk.sign(t, base(map[string]any{"aud": "other"})), ReasonInvalid, "", false, false, false},
		{"no aud", withAud, rk.sign(t, base(map[string]any{"aud": nil})), ReasonInvalid, "", false, false, false},
		{"aud without oidc.audience", noAud, rk.sign(t, base(nil)), ReasonInvalid, "", false, false, false},
		{"no aud, no oidc.audience", noAud, rk.sign(t, base(map[string]any{"aud": nil})), "", "viewer", true, true, true},
		{"expired", withAud, rk.sign(t, base(map[string]any{"exp": now - 1})), ReasonExpired, "", false, false, false},
		{"no exp", withAud, rk.sign(t, base(map[string]any{"exp": nil})), ReasonExpired, "", false, false, false},
		{"wrong iss", withAud, rk.sign(t, base(map[string]any{"iss": "http://127.0.0.9"})), ReasonInvalid, "", false, false, false},
		{"unpublished key", withAud, stranger.sign(t, base(nil)), ReasonInvalid, "", false, false, false},
		{"alg none", withAud, algNone(rk.sign(t, base(nil))), ReasonInvalid, "", false, false, false},
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
	is := newIssuer(t)
	k1, k2, k3 := rsaSigner(t, "k1"), ecSigner(t, "k2"), rsaSigner(t, "k3")
	is.serve(k1)
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL, Audience: "ph", MinRefreshInterval: 10 * time.Second}, nil)
	tok := func(s *signer) string {
		now := clock.Now().Unix()
		return s.sign(t, map[string]any{"iss": is.srv.URL, "aud": "ph", "sub": s.kid, "exp": now + 3600, "proxy_hopper_role": "admin"})
	}
	check := func(step string, s *signer, ok bool) {
		t.Helper()
		p, err := a.Authenticate(tok(s))
		if (err == nil) != ok {
			t.Fatalf("%s: token of %s: %v, want ok=%v", step, s.kid, err, ok)
		}
		if ok && p.Name != s.kid {
			t.Fatalf("%s: subject %q", step, p.Name)
		}
	}
	check("start", k1, true)
	is.serve(k1, k2) // k2 published
	check("k2 right after a fetch", k2, false)
	clock.Add(11 * time.Second)
	check("k2 after the minimum interval", k2, true)
	check("k1 still published", k1, true)
	is.serve(k3) // k1 and k2 withdrawn
	clock.Add(11 * time.Second)
	check("k3", k3, true)
	clock.Add(11 * time.Second)
	check("withdrawn k1", k1, false)
	check("withdrawn k2", k2, false)
	// The keys are fetched again after RefreshEvery even when every kid
	// is known: a key withdrawn under a known kid stops working.
	k3b := rsaSigner(t, "k3")
	is.serve(k3b)
	check("old k3 before the refresh", k3, true)
	clock.Add(DefaultOIDCRefreshEvery)
	check("old k3 after the refresh", k3, false)
	check("new k3", k3b, true)
}

// TestOIDCUnknownKidFlood: tokens naming keys the issuer never had, sent
// at once and again and again, make at most one fetch per minimum interval.
func TestOIDCUnknownKidFlood(t *testing.T) {
	is := newIssuer(t)
	good := rsaSigner(t, "good")
	is.serve(good)
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL, Audience: "ph"}, nil)
	now := clock.Now().Unix()
	claims := map[string]any{"iss": is.srv.URL, "aud": "ph", "sub": "x", "exp": now + 3600}
	if _, err := a.Authenticate(good.sign(t, claims)); err != nil {
		t.Fatal(err)
	}
	before := is.hits()
	bogus := make([]string, 50)
	for i := range bogus {
		s := *good
		s.kid = fmt.Sprintf("bogus-%d", i)
		bogus[i] = s.sign(t, claims)
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
	if got := is.hits() - before; got > 6 {
		t.Errorf("600 tokens of unknown keys made %d requests to the issuer, want at most 6", got)
	}
	if _, err := a.Authenticate(good.sign(t, claims)); err != nil {
		t.Errorf("good token after the flood: %v", err)
	}
}

// TestOIDCIssuerFailures: an issuer that is down, lies about its name,
// sends a huge JWKS, or hangs refuses the tokens, and a later fetch (after
// the minimum interval) recovers.
func TestOIDCIssuerFailures(t *testing.T) {
	is := newIssuer(t)
	k := ecSigner(t, "k")
	is.serve(k)
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL, Audience: "ph", FetchTimeout: 500 * time.Millisecond, MaxResponseBytes: 64 << 10}, nil)
	tok := k.sign(t, map[string]any{"iss": is.srv.URL, "aud": "ph", "sub": "x", "exp": clock.Now().Unix() + 3600})
	fails := func(step string, setup func()) {
		t.Helper()
		setup()
		clock.Add(DefaultOIDCRefreshEvery) // every step starts a fetch
		if _, err := a.Authenticate(tok); err == nil || Reason(err) != ReasonInvalid {
			t.Errorf("%s: %v, want refused as invalid", step, err)
		}
	}
	fails("issuer mismatch", func() { is.mu.Lock(); is.discIssuer = "http://127.0.0.9"; is.mu.Unlock() })
	fails("JWKS over the size limit", func() {
		is.mu.Lock()
		is.discIssuer = ""
		// A valid JWKS but for its size.
		set, _ := json.Marshal(jose.JSONWebKeySet{Keys: is.keys})
		is.jwksBody = append(set[:len(set)-1], []byte(`,"pad":"`+strings.Repeat("x", 128<<10)+`"}`)...)
		is.mu.Unlock()
	})
	fails("JWKS without a usable key", func() { is.mu.Lock(); is.jwksBody = []byte(`{"keys":[{"kty":"oct","k":"AAAA"}]}`); is.mu.Unlock() })
	block := make(chan struct{})
	start := time.Now()
	fails("hanging JWKS", func() { is.mu.Lock(); is.jwksBody, is.block = nil, block; is.mu.Unlock() })
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("a hanging issuer held the token %s (fetch timeout 0.5s)", el)
	}
	close(block)
	is.mu.Lock()
	is.block = nil
	is.mu.Unlock()
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
	is.mu.Lock()
	is.discIssuer = "http://127.0.0.9"
	is.mu.Unlock()
	clock.Add(DefaultOIDCRefreshEvery)
	if _, err := a.Authenticate(tok); err != nil {
		t.Errorf("known keys dropped when a refresh failed: %v", err)
	}
}

// TestOIDCCallerDeadline: a caller whose context ends stops waiting for
// a fetch, while the fetch goes on for the others.
func TestOIDCCallerDeadline(t *testing.T) {
	is := newIssuer(t)
	k := rsaSigner(t, "k")
	is.serve(k)
	block := make(chan struct{})
	is.block = block
	clock := &fakeClock{t: time.Now()}
	a := oidcAuth(t, clock, OIDC{Issuer: is.srv.URL, Audience: "ph"}, nil)
	tok := k.sign(t, map[string]any{"iss": is.srv.URL, "aud": "ph", "sub": "x", "exp": clock.Now().Unix() + 3600})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := a.AuthenticateContext(ctx, tok); done <- err }()
	other := make(chan error, 1)
	go func() { _, err := a.AuthenticateContext(context.Background(), tok); other <- err }()
	for is.jwksHits.Load() == 0 {
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
