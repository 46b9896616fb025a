package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// OIDCIssuer is a local OpenID Connect issuer on loopback: a discovery
// document and a JWKS whose keys the test changes at will.
type OIDCIssuer struct {
	Srv        *httptest.Server
	Mu         sync.Mutex
	Keys       []jose.JSONWebKey // served (public)
	JWKSBody   []byte            // when set, served instead of keys
	DiscIssuer string            // when set, the discovery document's issuer
	Block      chan struct{}     // when set, JWKS requests wait on it
	DiscHits   atomic.Int64
	JWKSHits   atomic.Int64
}

func NewOIDCIssuer(t testing.TB) *OIDCIssuer {
	t.Helper()
	is := &OIDCIssuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.DiscHits.Add(1)
		is.Mu.Lock()
		iss := is.DiscIssuer
		is.Mu.Unlock()
		if iss == "" {
			iss = is.Srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": iss, "jwks_uri": is.Srv.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"}})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		is.JWKSHits.Add(1)
		is.Mu.Lock()
		block, body, keys := is.Block, is.JWKSBody, is.Keys
		is.Mu.Unlock()
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
	is.Srv = httptest.NewServer(mux) // 127.0.0.1
	t.Cleanup(is.Srv.Close)
	return is
}

// Serve makes the JWKS hold exactly the public halves of keys.
func (is *OIDCIssuer) Serve(keys ...*OIDCKey) {
	is.Mu.Lock()
	defer is.Mu.Unlock()
	is.Keys = nil
	for _, k := range keys {
		is.Keys = append(is.Keys, jose.JSONWebKey{Key: k.public, KeyID: k.Kid, Algorithm: string(k.Alg), Use: "sig"})
	}
}

func (is *OIDCIssuer) Hits() int64 { return is.DiscHits.Load() + is.JWKSHits.Load() }

// OIDCKey is one signing key of an issuer.
type OIDCKey struct {
	Kid    string
	Alg    jose.SignatureAlgorithm
	key    any
	public any
}

func RSAKey(t testing.TB, kid string) *OIDCKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &OIDCKey{Kid: kid, Alg: jose.RS256, key: k, public: &k.PublicKey}
}

func ECKey(t testing.TB, kid string) *OIDCKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &OIDCKey{Kid: kid, Alg: jose.ES256, key: k, public: &k.PublicKey}
}

// Sign makes a compact JWS of claims with s (its kid in the header).
func (s *OIDCKey) Sign(t testing.TB, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if s.Kid != "" {
		opts = opts.WithHeader("kid", s.Kid)
	}
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: s.Alg, Key: s.key}, opts)
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
