package auth

import (
	"encoding/base64"
	"errors"
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
