package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// Defaults of OIDC.
const (
	DefaultRolesClaim       = "proxy_hopper_role"
	DefaultOIDCFetchTimeout = 10 * time.Second // proxy-hopper's httpx timeout
	DefaultOIDCRefreshEvery = 5 * time.Minute  // proxy-hopper's JWKS cache
	DefaultOIDCMinRefresh   = 10 * time.Second
	DefaultOIDCMaxResponse  = 1 << 20
	maxJWKSKeys             = 100
	maxRolesInClaim         = 32
)

// oidcAlgs are the algorithms proxy-hopper accepts from an issuer.
var oidcAlgs = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}

// OIDC makes the Authenticator accept bearer tokens of an external OpenID
// Connect issuer, verified against its discovery document and JWKS.
type OIDC struct {
	// Issuer is the issuer URL: its discovery document is
	// Issuer+"/.well-known/openid-configuration", whose issuer must be
	// Issuer, and a token's iss must be Issuer too.
	Issuer string
	// Audience, when set, must be in the token's aud. When not set, a
	// token that has an aud is refused, as proxy-hopper (PyJWT) does.
	Audience string
	// RolesClaim names the claim that carries the role: a string, or a
	// list of strings (several roles). Default DefaultRolesClaim. A token
	// without it gets Config.DefaultRole.
	RolesClaim string
	// Client fetches the documents (default: one with FetchTimeout). Its
	// responses are cut at MaxResponseBytes either way.
	Client *http.Client
	// FetchTimeout bounds one fetch of the discovery document and JWKS
	// together (DefaultOIDCFetchTimeout).
	FetchTimeout time.Duration
	// RefreshEvery: keys older than this are fetched again on the next
	// token (DefaultOIDCRefreshEvery). Until a fetch succeeds the last
	// keys stay in use.
	RefreshEvery time.Duration
	// MinRefreshInterval: at most one fetch starts in this long, however
	// many tokens name a key the agent does not know
	// (DefaultOIDCMinRefresh).
	MinRefreshInterval time.Duration
	// MaxResponseBytes bounds each document (DefaultOIDCMaxResponse).
	MaxResponseBytes int64
}

// oidcVerifier verifies tokens of one issuer. Safe for concurrent use.
type oidcVerifier struct {
	cfg      OIDC
	client   *http.Client
	verifier *oidc.IDTokenVerifier
	keys     *keyCache
	log      *slog.Logger
	now      func() time.Time
}

func newOIDCVerifier(c OIDC, now func() time.Time, log *slog.Logger) (*oidcVerifier, error) {
	u, err := url.Parse(c.Issuer)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("auth.oidc.issuer: %q is not an http(s) URL", c.Issuer)
	}
	if c.RolesClaim == "" {
		c.RolesClaim = DefaultRolesClaim
	}
	if c.FetchTimeout <= 0 {
		c.FetchTimeout = DefaultOIDCFetchTimeout
	}
	if c.RefreshEvery <= 0 {
		c.RefreshEvery = DefaultOIDCRefreshEvery
	}
	if c.MinRefreshInterval <= 0 {
		c.MinRefreshInterval = DefaultOIDCMinRefresh
	}
	if c.MaxResponseBytes <= 0 {
		c.MaxResponseBytes = DefaultOIDCMaxResponse
	}
	base := c.Client
	if base == nil {
		base = &http.Client{}
	}
	rt := base.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	client := *base
	client.Transport = limitTransport{rt: rt, max: c.MaxResponseBytes}
	if client.Timeout <= 0 || client.Timeout > c.FetchTimeout {
		client.Timeout = c.FetchTimeout
	}
	v := &oidcVerifier{cfg: c, client: &client, log: log, now: now}
	v.keys = &keyCache{fetch: v.fetchKeys, now: now, every: c.RefreshEvery, minGap: c.MinRefreshInterval, timeout: c.FetchTimeout,
		onError: func(err error) {
			// At most one line per MinRefreshInterval: fetches are limited so.
			log.Warn("oidc: cannot fetch the issuer's keys; tokens are checked against the last keys fetched, if any",
				"issuer", describeIssuer(c.Issuer), "err", err)
		}}
	v.verifier = oidc.NewVerifier(c.Issuer, v, &oidc.Config{
		ClientID:             c.Audience,
		SkipClientIDCheck:    c.Audience == "",
		SupportedSigningAlgs: oidcAlgs,
		Now:                  now,
	})
	return v, nil
}

// oidcClaims is what a verified token yields.
type oidcClaims struct {
	sub     string
	roles   []string
	hasRole bool
}

// verify checks tok's signature against the issuer's keys, then its iss,
// aud and exp (go-oidc), then reads the roles claim.
func (v *oidcVerifier) verify(ctx context.Context, tok string) (*oidcClaims, error) {
	idt, err := v.verifier.Verify(ctx, tok)
	if err != nil {
		var exp *oidc.TokenExpiredError
		if errors.As(err, &exp) {
			return nil, errExpired
		}
		return nil, invalid("oidc: " + err.Error())
	}
	if v.cfg.Audience == "" && len(idt.Audience) > 0 {
		return nil, invalid("oidc: aud present but auth.oidc.audience is not set")
	}
	var f map[string]json.RawMessage
	if err := idt.Claims(&f); err != nil {
		return nil, invalid("oidc: claims are not a JSON object")
	}
	c := &oidcClaims{sub: idt.Subject}
	raw, ok := f[v.cfg.RolesClaim]
	if !ok || string(raw) == "null" {
		return c, nil
	}
	c.hasRole = true
	var one string
	if json.Unmarshal(raw, &one) == nil {
		c.roles = []string{one}
		return c, nil
	}
	if json.Unmarshal(raw, &c.roles) != nil {
		return nil, invalid("oidc: " + v.cfg.RolesClaim + " is not a string or a list of strings")
	}
	if len(c.roles) > maxRolesInClaim {
		return nil, invalid("oidc: " + v.cfg.RolesClaim + " names too many roles")
	}
	return c, nil
}

// VerifySignature implements oidc.KeySet: tok's signature by a key of the
// issuer's JWKS. A key id the agent does not know makes it fetch the JWKS
// again (key rotation), at most once per MinRefreshInterval.
func (v *oidcVerifier) VerifySignature(ctx context.Context, tok string) ([]byte, error) {
	algs := make([]jose.SignatureAlgorithm, len(oidcAlgs))
	for i, a := range oidcAlgs {
		algs[i] = jose.SignatureAlgorithm(a)
	}
	jws, err := jose.ParseSignedCompact(tok, algs)
	if err != nil || len(jws.Signatures) != 1 {
		return nil, errors.New("not a compact JWS with one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, err := v.keys.get(ctx, false)
	if p, ok := verifyWith(jws, keys, kid); ok {
		return p, nil
	}
	if kid != "" && slices.ContainsFunc(keys, func(k jose.JSONWebKey) bool { return k.KeyID == kid }) {
		return nil, errors.New("bad signature")
	}
	if keys, err = v.keys.get(ctx, true); err != nil && len(keys) == 0 {
		return nil, err
	}
	if p, ok := verifyWith(jws, keys, kid); ok {
		return p, nil
	}
	return nil, fmt.Errorf("no key of the issuer verifies it (kid %.64q)", kid)
}

func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, bool) {
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		if p, err := jws.Verify(&keys[i]); err == nil {
			return p, true
		}
	}
	return nil, false
}

// fetchKeys reads the discovery document (go-oidc checks its issuer) and
// the JWKS it names. Keys of types or algorithms go-jose does not know,
// private keys and encryption keys are skipped.
func (v *oidcVerifier) fetchKeys(ctx context.Context) ([]jose.JSONWebKey, error) {
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, v.client), v.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("fetch discovery document: %w", err)
	}
	var meta struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := p.Claims(&meta); err != nil {
		return nil, fmt.Errorf("read discovery document: %w", err)
	}
	if u, err := url.Parse(meta.JWKSURI); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("read discovery document: jwks_uri %.200q is not an http(s) URL", meta.JWKSURI)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, meta.JWKSURI, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS: %s", resp.Status)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("read JWKS: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var k jose.JSONWebKey
		if json.Unmarshal(raw, &k) != nil || !k.Valid() || !k.IsPublic() || k.Use == "enc" {
			continue
		}
		if k.Algorithm != "" && !slices.Contains(oidcAlgs, k.Algorithm) {
			continue
		}
		if keys = append(keys, k); len(keys) == maxJWKSKeys {
			break
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("read JWKS: no usable signing key")
	}
	return keys, nil
}

// keyCache holds the issuer's keys. One fetch runs at a time and at most
// one starts per minGap; callers share its result.
type keyCache struct {
	fetch   func(context.Context) ([]jose.JSONWebKey, error)
	now     func() time.Time
	every   time.Duration
	minGap  time.Duration
	timeout time.Duration
	onError func(error)

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	fetched   time.Time // last success
	attempted time.Time // last start
	lastErr   error
	inflight  chan struct{}
	fetches   int
}

// get returns the keys, fetching first when there are none, they are
// older than every, or want is set (an unknown key id) — unless a fetch
// started less than minGap ago: then the keys there are. A fetch runs
// detached from ctx (bounded by timeout) so that one caller giving up
// does not fail the others waiting for it.
func (c *keyCache) get(ctx context.Context, want bool) ([]jose.JSONWebKey, error) {
	c.mu.Lock()
	now := c.now()
	ch := c.inflight
	if ch == nil {
		stale := c.keys == nil || now.Sub(c.fetched) >= c.every
		if (stale || want) && (c.attempted.IsZero() || now.Sub(c.attempted) >= c.minGap) {
			c.attempted = now
			c.fetches++
			ch = make(chan struct{})
			c.inflight = ch
			go c.run(ch)
		}
	}
	if ch == nil {
		keys, err := c.keys, c.lastErr
		c.mu.Unlock()
		if keys != nil {
			err = nil
		}
		return keys, err
	}
	c.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keys != nil {
		return c.keys, nil
	}
	return nil, c.lastErr
}

func (c *keyCache) run(ch chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	keys, err := c.fetch(ctx)
	cancel()
	c.mu.Lock()
	if err == nil {
		c.keys, c.fetched, c.lastErr = keys, c.now(), nil
	} else {
		c.lastErr = err
	}
	c.inflight = nil
	onError := c.onError
	c.mu.Unlock()
	close(ch)
	if err != nil && onError != nil {
		onError(err)
	}
}

// stats reports how many fetches started (for tests).
func (c *keyCache) stats() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetches
}

// limitTransport cuts every response body at max bytes: reading past it
// is an error, so a document that large is refused, not truncated.
type limitTransport struct {
	rt  http.RoundTripper
	max int64
}

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

// errTooLarge: an issuer's document is longer than MaxResponseBytes.
var errTooLarge = errors.New("response larger than auth.oidc's limit")

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// describeIssuer is the issuer for logs: its URL without query or userinfo.
func describeIssuer(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable issuer URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return strings.TrimSuffix(u.String(), "/")
}
