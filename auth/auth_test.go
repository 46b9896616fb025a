package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsBadKeys(t *testing.T) {
	for _, k := range []APIKey{
		{Name: "both", Key: "a", KeyHash: strings.Repeat("0", 64)},
		{Name: "neither"},
		{Name: "short-hash", KeyHash: "abcd"},
		{Name: "not-hex", KeyHash: strings.Repeat("z", 64)},
	} {
		if _, err := New(Config{Enabled: true, APIKeys: []APIKey{k}}); err == nil || !strings.Contains(err.Error(), k.Name) {
			t.Errorf("%s: err %v, want one naming the key", k.Name, err)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a, err := New(Config{Enabled: true, JWTSecret: "s", Now: func() time.Time { return now },
		APIKeys: []APIKey{{Name: "k1", Key: "one", Targets: []string{"a"}}, {Name: "k2", Key: "two", Targets: []string{"*"}}}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		token  string
		reason string
		kind   string
	}{
		{"", ReasonMissing, ""},
		{"   ", ReasonMissing, ""},
		{"one", "", "api_key"},
		{"two", "", "api_key"},
		{"three", ReasonInvalid, ""},
		{"a.b.c", ReasonInvalid, ""},
		{SignJWT("s", map[string]any{"role": "admin", "exp": now.Unix() + 60}), "", "jwt"},
		{SignJWT("s", map[string]any{"role": "admin", "exp": now.Unix()}), ReasonExpired, ""},
		{SignJWT("s", map[string]any{"role": "admin", "exp": now.Unix() + 60, "nbf": now.Unix() + 30}), ReasonInvalid, ""},
		{SignJWT("one", map[string]any{"role": "admin", "exp": now.Unix() + 60}), ReasonInvalid, ""},
		{algNone(SignJWT("s", map[string]any{"role": "admin", "exp": now.Unix() + 60})), ReasonInvalid, ""},
	}
	for _, c := range cases {
		p, err := a.Authenticate(c.token)
		if got := Reason(err); got != c.reason {
			t.Errorf("token %.20q: reason %q (%v), want %q", c.token, got, err, c.reason)
		}
		if err == nil && p.Kind != c.kind {
			t.Errorf("token %.20q: kind %q, want %q", c.token, p.Kind, c.kind)
		}
		if err != nil && strings.Contains(err.Error(), c.token) && c.token != "" && strings.TrimSpace(c.token) != "" {
			t.Errorf("error text contains the token: %v", err)
		}
	}
	p, _ := a.Authenticate("one")
	if p.Allows("a") != nil || !errors.Is(p.Allows("b"), ErrForbidden) || !strings.Contains(p.Allows("b").Error(), "'b'") {
		t.Errorf("key k1 target checks wrong: %v %v", p.Allows("a"), p.Allows("b"))
	}
}

func TestAllowSource(t *testing.T) {
	a, _ := New(Config{Enabled: true, Sources: []SourceRule{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Targets: []string{"a"}},
		{Prefix: netip.MustParsePrefix("10.1.0.0/16")},
	}})
	for _, c := range []struct {
		src, target string
		ok          bool
	}{
		{"10.2.0.1", "a", true},
		{"10.2.0.1", "b", false},
		{"10.1.0.1", "b", true},
		{"::ffff:10.2.0.1", "a", true},
		{"192.168.1.1", "a", false},
	} {
		err := a.AllowSource(netip.MustParseAddr(c.src), c.target)
		if (err == nil) != c.ok {
			t.Errorf("%s → %s: %v, want ok=%v", c.src, c.target, err, c.ok)
		}
	}
	var none *Authenticator
	if none.AllowSource(netip.MustParseAddr("1.2.3.4"), "x") != nil || none.Enabled() {
		t.Errorf("nil authenticator must allow everything")
	}
}

// algNone swaps a token's header for {"alg":"none"}, keeping the rest.
func algNone(tok string) string {
	_, rest, _ := strings.Cut(tok, ".")
	return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + rest
}

// signRaw signs a payload given as raw JSON (SignJWT would re-encode it).
func signRaw(secret, header, payload string) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(header))
	p := base64.RawURLEncoding.EncodeToString([]byte(payload))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(h + "." + p))
	return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// TestJWTClaims: lifetime capped, exact claim names, duplicates refused,
// iss and aud checked.
func TestJWTClaims(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	exp := now.Unix() + 60
	hs := `{"alg":"HS256","typ":"JWT"}`
	plain, err := New(Config{Enabled: true, JWTSecret: "s", Now: clock,
		Roles: map[string]Role{"api-reader": {Permissions: []string{"read"}, Targets: []string{"api"}}}})
	if err != nil {
		t.Fatal(err)
	}
	strict, err := New(Config{Enabled: true, JWTSecret: "s", Now: clock, JWTIssuer: "https://idp.invalid/",
		JWTAudience: "proxy-hopper", JWTMaxLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		a      *Authenticator
		token  string
		reason string
		role   string
	}{
		{"exp 1e300", plain, signRaw("s", hs, `{"role":"viewer","exp":1e300}`), ReasonInvalid, ""},
		{"exp 25h away", plain, SignJWT("s", map[string]any{"exp": now.Unix() + 25*3600}), ReasonInvalid, ""},
		{"exp 23h away", plain, SignJWT("s", map[string]any{"exp": now.Unix() + 23*3600}), "", "viewer"},
		{"issued 2 days before exp", plain, SignJWT("s", map[string]any{"exp": exp, "iat": now.Unix() - 48*3600}), ReasonInvalid, ""},
		{"exp not a number", plain, signRaw("s", hs, `{"exp":"soon"}`), ReasonInvalid, ""},
		{"no exp", plain, signRaw("s", hs, `{"role":"admin"}`), ReasonInvalid, ""},
		{"role twice", plain, signRaw("s", hs, fmt.Sprintf(`{"role":"api-reader","exp":%d,"role":"admin"}`, exp)), ReasonInvalid, ""},
		{"exp twice", plain, signRaw("s", hs, fmt.Sprintf(`{"exp":%d,"exp":1e300}`, exp)), ReasonInvalid, ""},
		{"alg twice", plain, signRaw("s", `{"alg":"none","alg":"HS256"}`, fmt.Sprintf(`{"exp":%d}`, exp)), ReasonInvalid, ""},
		{"ROLE is not role", plain, signRaw("s", hs, fmt.Sprintf(`{"ROLE":"api-reader","exp":%d}`, exp)), "", "viewer"},
		{"Exp is not exp", plain, signRaw("s", hs, fmt.Sprintf(`{"Exp":%d}`, exp)), ReasonInvalid, ""},
		{"role not a string", plain, signRaw("s", hs, fmt.Sprintf(`{"role":["admin"],"exp":%d}`, exp)), ReasonInvalid, ""},
		{"trailing data", plain, signRaw("s", hs, fmt.Sprintf(`{"exp":%d}{}`, exp)), ReasonInvalid, ""},
		{"aud without jwtAudience", plain, SignJWT("s", map[string]any{"exp": exp, "aud": "other"}), ReasonInvalid, ""},
		{"custom role", plain, SignJWT("s", map[string]any{"exp": exp, "role": "api-reader"}), "", "api-reader"},
		{"no iss", strict, SignJWT("s", map[string]any{"exp": exp, "aud": "proxy-hopper"}), ReasonInvalid, ""},
		{"wrong iss", strict, SignJWT("s", map[string]any{"exp": exp, "aud": "proxy-hopper", "iss": "https://evil.invalid/"}), ReasonInvalid, ""},
		{"no aud", strict, SignJWT("s", map[string]any{"exp": exp, "iss": "https://idp.invalid/"}), ReasonInvalid, ""},
		{"wrong aud", strict, SignJWT("s", map[string]any{"exp": exp, "iss": "https://idp.invalid/", "aud": "other"}), ReasonInvalid, ""},
		{"iss and aud", strict, SignJWT("s", map[string]any{"exp": exp, "iss": "https://idp.invalid/", "aud": "proxy-hopper"}), "", "viewer"},
		{"aud list", strict, SignJWT("s", map[string]any{"exp": exp, "iss": "https://idp.invalid/", "aud": []string{"x", "proxy-hopper"}}), "", "viewer"},
		{"over the configured lifetime", strict, SignJWT("s", map[string]any{"exp": now.Unix() + 2*3600, "iss": "https://idp.invalid/", "aud": "proxy-hopper"}), ReasonInvalid, ""},
	} {
		p, err := c.a.Authenticate(c.token)
		if got := Reason(err); got != c.reason {
			t.Errorf("%s: reason %q (%v), want %q", c.name, got, err, c.reason)
			continue
		}
		if err == nil && p.Role != c.role {
			t.Errorf("%s: role %q, want %q", c.name, p.Role, c.role)
		}
	}
}

// TestJWTDefaultRole: a token without a role claim gets viewer (every
// target, as proxy-hopper), or the configured default role; a default
// that is no role (none) refuses it.
func TestJWTDefaultRole(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok := SignJWT("s", map[string]any{"sub": "ci", "exp": now.Unix() + 60})
	roles := map[string]Role{"api-reader": {Permissions: []string{"read"}, Targets: []string{"api"}}}
	for _, c := range []struct {
		def       string
		api, web  bool
		wantRole  string
		wantInErr string
	}{
		{"", true, true, "viewer", ""},
		{"api-reader", true, false, "api-reader", "cannot access target 'web'"},
		{"none", false, false, "none", "does not have proxy access"},
	} {
		a, err := New(Config{Enabled: true, JWTSecret: "s", Now: func() time.Time { return now }, DefaultRole: c.def, Roles: roles})
		if err != nil {
			t.Fatal(err)
		}
		p, err := a.Authenticate(tok)
		if err != nil || p.Role != c.wantRole || p.Name != "ci" {
			t.Fatalf("default %q: %+v %v", c.def, p, err)
		}
		if (p.Allows("api") == nil) != c.api || (p.Allows("web") == nil) != c.web {
			t.Errorf("default %q: api %v, web %v", c.def, p.Allows("api"), p.Allows("web"))
		}
		if c.wantInErr != "" && !strings.Contains(p.Allows("web").Error(), c.wantInErr) {
			t.Errorf("default %q: %v, want %q", c.def, p.Allows("web"), c.wantInErr)
		}
	}
}

// TestJWTAlgConfusion: a local JWT is HS256 or nothing. Tokens signed
// with the secret under another alg name (HS384, or RS256 as if the
// secret were a public key) are refused, with and without OIDC, as is a
// token longer than MaxTokenBytes before it is parsed.
func TestJWTAlgConfusion(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	payload := fmt.Sprintf(`{"role":"admin","exp":%d}`, now.Unix()+60)
	hs384 := func(header string) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(header))
		p := base64.RawURLEncoding.EncodeToString([]byte(payload))
		mac := hmac.New(sha512.New384, []byte("s"))
		mac.Write([]byte(h + "." + p))
		return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	}
	plain, _ := New(Config{Enabled: true, JWTSecret: "s", Now: func() time.Time { return now }})
	withOIDC, err := New(Config{Enabled: true, JWTSecret: "s", Now: func() time.Time { return now },
		OIDC: &OIDC{Issuer: "http://127.0.0.1:1", FetchTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{
		"HS384":           hs384(`{"alg":"HS384","typ":"JWT"}`),
		"RS256 with HMAC": signRaw("s", `{"alg":"RS256","typ":"JWT"}`, payload),
		"ES256 with HMAC": signRaw("s", `{"alg":"ES256","typ":"JWT"}`, payload),
		"lowercase alg":   signRaw("s", `{"alg":"hs256","typ":"JWT"}`, payload),
		"too long":        signRaw("s", `{"alg":"HS256","typ":"JWT"}`, fmt.Sprintf(`{"exp":%d,"pad":"%s"}`, now.Unix()+60, strings.Repeat("x", MaxTokenBytes))),
	} {
		for _, a := range []*Authenticator{plain, withOIDC} {
			if p, err := a.Authenticate(tok); Reason(err) != ReasonInvalid {
				t.Errorf("%s (oidc %v): %+v %v, want invalid", name, a.oidc != nil, p, err)
			}
		}
	}
	if _, err := plain.Authenticate(signRaw("s", `{"alg":"HS256","typ":"JWT"}`, payload)); err != nil {
		t.Errorf("the same payload as HS256: %v", err)
	}
}
