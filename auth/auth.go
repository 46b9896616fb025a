// Package auth decides, at the agent's boundary and before any IP is
// acquired, who a client is and which targets it may use. It knows nothing
// of pools; the proxy hands it a token and a target name.
//
// A bearer token is tried, as in proxy-hopper, as:
//
//  1. an API key (auth.apiKeys), compared in constant time against every key;
//  2. a local JWT: HS256, signed with auth.jwtSecret, as POST /auth/login
//     issues them (golang-jwt/jwt/v5; no other alg is accepted);
//  3. an OIDC token (auth.oidc): RS256/384/512 or ES256/384/512, signed by
//     a key of the issuer's JWKS, found from its discovery document
//     (coreos/go-oidc/v3); iss, aud and exp are checked, and the role comes
//     from the configured claim (a string, or a list of strings).
//
// Transparent clients, which cannot send headers, are allowed by source
// address (AllowSource).
//
// Roles: admin (read, write, admin), operator (read, write) and viewer
// (read) are built in, every target each; auth.roles adds or redefines
// roles with their targets. Proxy access needs "read". API keys carry
// their own targets and no permission: the admin API refuses them (403).
//
// # Using it from the admin server
//
// *Authenticator implements Verifier. An admin handler gets the bearer
// token of the Authorization header and calls Verify; a nil error gives a
// Principal whose Can("read"), Can("write") or Can("admin") decides the
// request (401 for ErrMissing/ErrInvalid, 403 for a missing permission,
// as proxy-hopper). Principal.Name, Roles and Targets() describe it.
//
// NewLoginHandler serves POST /auth/login: form fields username and
// password (application/x-www-form-urlencoded, OAuth2's password grant),
// checked against auth.admin's bcrypt hash; 200 with {"access_token",
// "token_type":"bearer"}, 401 for wrong credentials, 404 when no admin
// user is configured, 422 for a missing field, 413 past 8 KiB, 429 when a
// client has failed too often. The token it issues is a local JWT: the
// proxy and Verify accept it. The handler takes a func returning the live
// Authenticator, so one handler (and its per-client limits) outlives
// config reloads.
package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Sentinel errors; their text never contains the token.
var (
	ErrMissing = errors.New("authentication required")
	ErrInvalid = errors.New("invalid or expired token")
	errExpired = fmt.Errorf("%w (expired)", ErrInvalid)
)

// Reasons a request was refused, for logs and metrics.
const (
	ReasonMissing   = "missing"
	ReasonInvalid   = "invalid"
	ReasonExpired   = "expired"
	ReasonForbidden = "forbidden"
	ReasonNoAccess  = "no_proxy_access"
	ReasonSource    = "source_not_allowed"
)

// APIKey is one static key. Exactly one of Key and KeyHash (sha256 hex of
// the key) is set. Targets: ["*"] is all, names list targets, empty is none.
type APIKey struct {
	Name    string
	Key     string
	KeyHash string
	Targets []string
}

// Role is a custom role: its permissions (proxy access needs "read") and
// targets (["*"] all).
type Role struct {
	Permissions []string
	Targets     []string
}

// SourceRule allows transparent clients from Prefix to use Targets (nil:
// all targets).
type SourceRule struct {
	Prefix  netip.Prefix
	Targets []string
}

// DefaultJWTMaxLifetime is the longest a JWT may live when
// Config.JWTMaxLifetime is not set.
const DefaultJWTMaxLifetime = 24 * time.Hour

// DefaultRole is the role of a JWT without a role claim when
// Config.DefaultRole is not set, as in proxy-hopper.
const DefaultRole = "viewer"

// Config is the typed auth block.
type Config struct {
	Enabled   bool
	APIKeys   []APIKey
	JWTSecret string
	// JWTIssuer, when set, must be the token's iss claim.
	JWTIssuer string
	// JWTAudience, when set, must be the token's aud claim (or one of
	// its values). When not set, a token that has an aud is refused: it
	// was made for another service.
	JWTAudience string
	// JWTMaxLifetime is the longest a token may live: its exp may not be
	// further than this beyond now, nor beyond its iat (default
	// DefaultJWTMaxLifetime).
	JWTMaxLifetime time.Duration
	// DefaultRole is the role of a JWT without a role claim (default
	// DefaultRole). A name that is no role (e.g. "none") denies them.
	DefaultRole string
	Roles       map[string]Role
	// Sources apply to transparent clients, which cannot send headers.
	// Empty means every source may use every target.
	Sources []SourceRule
	// Admins are the local users of POST /auth/login (auth.admin).
	Admins []AdminUser
	// JWTExpiry is the lifetime of the JWTs login issues
	// (auth.jwtExpiryMinutes; default DefaultJWTExpiry).
	JWTExpiry time.Duration
	// OIDC, when set, makes the issuer's tokens acceptable.
	OIDC *OIDC
	Now  func() time.Time // default time.Now
	Log  *slog.Logger     // default slog.Default() as component auth; never sees a token
}

// builtinRoles give proxy access to every target.
var builtinRoles = map[string]Role{
	"admin":    {Permissions: []string{"read", "write", "admin"}, Targets: []string{"*"}},
	"operator": {Permissions: []string{"read", "write"}, Targets: []string{"*"}},
	"viewer":   {Permissions: []string{"read"}, Targets: []string{"*"}},
}

// BuiltinRole returns the built-in role of that name.
func BuiltinRole(name string) (Role, bool) {
	r, ok := builtinRoles[name]
	return r, ok
}

type key struct {
	name    string
	hash    [sha256.Size]byte
	targets []string
}

// Authenticator checks tokens. It is immutable and safe for concurrent use.
type Authenticator struct {
	enabled     bool
	keys        []key
	secret      []byte
	issuer      string
	audience    string
	maxLifetime time.Duration
	defaultRole string
	roles       map[string]Role
	sources     []SourceRule
	admins      []admin
	compare     func(hash, password []byte) error // bcrypt's; tests count the calls
	jwtExpiry   time.Duration
	oidc        *oidcVerifier
	now         func() time.Time
	log         *slog.Logger
}

// New validates cfg.
func New(cfg Config) (*Authenticator, error) {
	a := &Authenticator{enabled: cfg.Enabled, secret: []byte(cfg.JWTSecret), roles: map[string]Role{}, sources: cfg.Sources, now: cfg.Now,
		issuer: cfg.JWTIssuer, audience: cfg.JWTAudience, maxLifetime: cfg.JWTMaxLifetime, defaultRole: cfg.DefaultRole}
	if a.now == nil {
		a.now = time.Now
	}
	if a.maxLifetime <= 0 {
		a.maxLifetime = DefaultJWTMaxLifetime
	}
	if a.defaultRole == "" {
		a.defaultRole = DefaultRole
	}
	a.log = cfg.Log
	if a.log == nil {
		a.log = slog.Default().With("component", "auth")
	}
	for n, r := range builtinRoles {
		a.roles[n] = r
	}
	for n, r := range cfg.Roles {
		a.roles[n] = r
	}
	for i, k := range cfg.APIKeys {
		var h [sha256.Size]byte
		switch {
		case k.Key != "" && k.KeyHash == "":
			h = sha256.Sum256([]byte(k.Key))
		case k.Key == "" && k.KeyHash != "":
			b, err := hex.DecodeString(k.KeyHash)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("auth.apiKeys[%d] (%s): keyHash must be 64 hex digits (sha256)", i, k.Name)
			}
			copy(h[:], b)
		default:
			return nil, fmt.Errorf("auth.apiKeys[%d] (%s): set exactly one of key and keyHash", i, k.Name)
		}
		a.keys = append(a.keys, key{name: k.Name, hash: h, targets: k.Targets})
	}
	if err := a.setAdmins(cfg); err != nil {
		return nil, err
	}
	if cfg.OIDC != nil {
		v, err := newOIDCVerifier(*cfg.OIDC, a.now, a.log)
		if err != nil {
			return nil, err
		}
		a.oidc = v
	}
	return a, nil
}

// Enabled reports whether requests must authenticate.
func (a *Authenticator) Enabled() bool { return a != nil && a.enabled }

// Verifier resolves a bearer token to a Principal; *Authenticator is one.
// Errors wrap ErrMissing or ErrInvalid and never hold the token.
type Verifier interface {
	Verify(ctx context.Context, token string) (*Principal, error)
}

var _ Verifier = (*Authenticator)(nil)

// Principal is an authenticated client.
type Principal struct {
	Kind  string   // "api_key", "jwt" (local) or "oidc"
	Name  string   // key name, or the token's subject
	Role  string   // the token's role; several are joined with ","
	Roles []string // the token's roles (none for an API key)

	targets []string
	perms   []string
	proxy   bool // may use the proxy at all
}

// Targets are the targets p may use (["*"]: all); a copy.
func (p *Principal) Targets() []string { return slices.Clone(p.targets) }

// Can reports whether p's roles grant permission perm (read, write,
// admin). An API key has none: it is for the proxy only.
func (p *Principal) Can(perm string) bool { return p != nil && slices.Contains(p.perms, perm) }

// Authenticate is AuthenticateContext without a deadline of the caller's
// (an OIDC key fetch is bounded by its own timeout).
func (a *Authenticator) Authenticate(token string) (*Principal, error) {
	return a.AuthenticateContext(context.Background(), token)
}

// Verify implements Verifier.
func (a *Authenticator) Verify(ctx context.Context, token string) (*Principal, error) {
	return a.AuthenticateContext(ctx, token)
}

// AuthenticateContext resolves a bearer token: an exact API key first
// (compared in constant time against every key), then a local HS256 JWT,
// then, for any other alg, an OIDC token when auth.oidc is set.
func (a *Authenticator) AuthenticateContext(ctx context.Context, token string) (*Principal, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, ErrMissing
	}
	if len(token) > MaxTokenBytes {
		return nil, invalid("token too long")
	}
	sum := sha256.Sum256([]byte(token))
	var found *key
	for i := range a.keys {
		// Every key is compared, so timing does not tell which matched.
		if subtle.ConstantTimeCompare(sum[:], a.keys[i].hash[:]) == 1 && found == nil {
			found = &a.keys[i]
		}
	}
	if found != nil {
		return &Principal{Kind: "api_key", Name: found.name, targets: found.targets, proxy: true}, nil
	}
	if a.oidc != nil && headerAlg(token) != localAlg {
		c, err := a.oidc.verify(ctx, token)
		if err != nil {
			return nil, err
		}
		roles := c.roles
		if !c.hasRole {
			roles = []string{a.defaultRole}
		}
		return a.principal("oidc", c.sub, roles), nil
	}
	claims, err := a.verifyJWT(token)
	if err != nil {
		return nil, err
	}
	role := claims.Role
	if !claims.hasRole {
		role = a.defaultRole
	}
	return a.principal("jwt", claims.Sub, []string{role}), nil
}

// principal gives a token's subject the union of its roles' permissions
// and, over the roles that may use the proxy, their targets. A name that
// is no role grants nothing.
func (a *Authenticator) principal(kind, sub string, roles []string) *Principal {
	p := &Principal{Kind: kind, Name: sub, Role: strings.Join(roles, ","), Roles: roles}
	for _, name := range roles {
		r, ok := a.roles[name]
		if !ok {
			continue
		}
		for _, perm := range r.Permissions {
			if !slices.Contains(p.perms, perm) {
				p.perms = append(p.perms, perm)
			}
		}
		if !slices.Contains(r.Permissions, "read") {
			continue
		}
		p.proxy = true
		targets := r.Targets
		if targets == nil {
			targets = []string{"*"}
		}
		for _, t := range targets {
			if !slices.Contains(p.targets, t) {
				p.targets = append(p.targets, t)
			}
		}
	}
	return p
}

// Allows reports whether p may use target; the error explains a refusal.
func (p *Principal) Allows(target string) error {
	if !p.proxy {
		return fmt.Errorf("%w: role '%s' does not have proxy access", ErrForbidden, p.Role)
	}
	if slices.Contains(p.targets, "*") || slices.Contains(p.targets, target) {
		return nil
	}
	if p.Kind == "api_key" {
		return fmt.Errorf("%w: API key '%s' is not permitted to access target '%s'", ErrForbidden, p.Name, target)
	}
	return fmt.Errorf("%w: role '%s' cannot access target '%s'", ErrForbidden, p.Role, target)
}

// ErrForbidden wraps every refusal of an authenticated client.
var ErrForbidden = errors.New("forbidden")

// AllowSource decides for a transparent client from src wanting target.
func (a *Authenticator) AllowSource(src netip.Addr, target string) error {
	if !a.Enabled() || len(a.sources) == 0 {
		return nil
	}
	src = src.Unmap()
	matched := false
	for _, r := range a.sources {
		if !r.Prefix.Contains(src) {
			continue
		}
		matched = true
		if r.Targets == nil || slices.Contains(r.Targets, "*") || slices.Contains(r.Targets, target) {
			return nil
		}
	}
	if matched {
		return fmt.Errorf("%w: source %s is not permitted to access target '%s'", ErrForbidden, src, target)
	}
	return fmt.Errorf("%w: source %s is not in auth.transparent.allowCidrs", ErrForbidden, src)
}

// claims are the registered and proxy-hopper claims of a JWT.
type claims struct {
	Sub     string
	Role    string
	hasRole bool
}

// invalid is ErrInvalid with why, for the log (never the token).
func invalid(why string) error { return fmt.Errorf("%w (%s)", ErrInvalid, why) }

// MaxTokenBytes is the longest token looked at; a longer one is refused
// before any parsing.
const MaxTokenBytes = 16 << 10

// localAlg is the one algorithm of local JWTs (proxy-hopper's HS256).
const localAlg = "HS256"

// segmentFields decodes a base64url JWT segment and splits its JSON
// object into members (objectFields).
func segmentFields(seg string) (map[string]json.RawMessage, error) {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return nil, errors.New("not base64url")
	}
	return objectFields(b)
}

// headerAlg returns the alg of a compact JWS, "" when it has none or is
// not one.
func headerAlg(tok string) string {
	h, _, ok := strings.Cut(tok, ".")
	if !ok {
		return ""
	}
	f, err := segmentFields(h)
	if err != nil {
		return ""
	}
	var alg string
	if json.Unmarshal(f["alg"], &alg) != nil {
		return ""
	}
	return alg
}

// verifyJWT checks a compact HS256 JWT signed with the configured secret
// and returns its claims. golang-jwt checks the signature (HS256 only:
// a token naming another alg, none included, is refused before any key
// is used), then exp (required), nbf, iss and aud. Before it, claim
// names are matched exactly (JSON's own rule; encoding/json would match
// "ROLE" to role in a struct), a name given twice in the header or the
// payload is refused (which one wins differs between parsers), and exp
// may not be further away than the maximum lifetime, from now or from iat.
func (a *Authenticator) verifyJWT(tok string) (*claims, error) {
	if len(a.secret) == 0 {
		return nil, ErrInvalid
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, ErrInvalid
	}
	if _, err := segmentFields(parts[0]); err != nil {
		return nil, invalid("header: " + err.Error())
	}
	f, err := segmentFields(parts[1])
	if err != nil {
		return nil, invalid("payload: " + err.Error())
	}
	parser := jwt.NewParser(jwt.WithValidMethods([]string{localAlg}), jwt.WithoutClaimsValidation())
	parsed, err := parser.Parse(tok, func(*jwt.Token) (any, error) { return a.secret, nil })
	if err != nil {
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			return nil, ErrInvalid
		}
		return nil, invalid("not an HS256 JWT of this agent")
	}
	mc, _ := parsed.Claims.(jwt.MapClaims)
	var c claims
	if raw, ok := f["sub"]; ok && json.Unmarshal(raw, &c.Sub) != nil {
		return nil, invalid("sub is not a string")
	}
	if raw, ok := f["role"]; ok {
		if json.Unmarshal(raw, &c.Role) != nil {
			return nil, invalid("role is not a string")
		}
		c.hasRole = true
	}
	// The lifetime bounds first: a far exp (1e300) is a forgery attempt,
	// not an expired token, and must not reach a time conversion.
	now := float64(a.now().Unix())
	exp, ok, err := numClaim(f, "exp")
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, invalid("no exp")
	case exp-now > a.maxLifetime.Seconds():
		return nil, invalid("exp beyond the maximum lifetime")
	}
	for _, n := range []string{"nbf", "iat"} {
		if _, _, err := numClaim(f, n); err != nil {
			return nil, err
		}
	}
	if iat, ok, _ := numClaim(f, "iat"); ok && exp-iat > a.maxLifetime.Seconds() {
		return nil, invalid("exp beyond the maximum lifetime after iat")
	}
	if err := a.checkAudience(f); err != nil {
		return nil, err
	}
	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithTimeFunc(a.now)}
	if a.issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.issuer))
	}
	if a.audience != "" {
		opts = append(opts, jwt.WithAudience(a.audience))
	}
	switch err := jwt.NewValidator(opts...).Validate(mc); {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, errExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return nil, invalid("not valid yet (nbf)")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return nil, invalid("wrong or no iss")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return nil, invalid("wrong or no aud")
	default:
		return nil, invalid("claims: " + err.Error())
	}
	return &c, nil
}

// numClaim reads a NumericDate claim: ok false when absent.
func numClaim(f map[string]json.RawMessage, name string) (v float64, ok bool, err error) {
	raw, ok := f[name]
	if !ok {
		return 0, false, nil
	}
	if json.Unmarshal(raw, &v) != nil {
		return 0, false, invalid(name + " is not a number")
	}
	return v, true, nil
}

// checkAudience: aud must be a string or a list of strings; without an
// audience configured, a token that names any aud is refused, as PyJWT
// (proxy-hopper's library) does. With one, golang-jwt checks it holds it.
func (a *Authenticator) checkAudience(f map[string]json.RawMessage) error {
	raw, ok := f["aud"]
	var auds []string
	if ok {
		var one string
		if json.Unmarshal(raw, &one) == nil {
			auds = []string{one}
		} else if json.Unmarshal(raw, &auds) != nil {
			return invalid("aud is not a string or a list of strings")
		}
	}
	if a.audience == "" && len(auds) > 0 {
		return invalid("aud present but auth.jwtAudience is not set")
	}
	return nil
}

// objectFields splits a JSON object into its members, refusing a name
// that appears twice and anything that is not one object.
func objectFields(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	out := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, errors.New("not a JSON object")
		}
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errors.New("not a JSON object")
		}
		if _, dup := out[name]; dup {
			return nil, errors.New("a name given twice")
		}
		out[name] = v
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return nil, errors.New("not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return out, nil
}

// SignJWT makes an HS256 token (for tests and tooling); it panics only
// when payload cannot be encoded as JSON.
func SignJWT(secret string, payload map[string]any) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(payload)).SignedString([]byte(secret))
	if err != nil {
		panic(fmt.Sprintf("sign JWT: %v", err))
	}
	return s
}

// Reason classifies an Authenticate or Allows error for metrics.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrMissing):
		return ReasonMissing
	case errors.Is(err, errExpired):
		return ReasonExpired
	case errors.Is(err, ErrInvalid):
		return ReasonInvalid
	case err != nil && strings.Contains(err.Error(), "proxy access"):
		return ReasonNoAccess
	case err != nil && strings.Contains(err.Error(), "source"):
		return ReasonSource
	case errors.Is(err, ErrForbidden):
		return ReasonForbidden
	}
	return ""
}
