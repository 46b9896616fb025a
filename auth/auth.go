// Package auth decides, at the agent's boundary and before any IP is
// acquired, who a client is (API key, local HS256 JWT, or source address
// for transparent clients) and which targets it may use. It knows nothing
// of HTTP framing or pools: the proxy hands it a token and a target name.
package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"
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
	Now     func() time.Time // default time.Now
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
	now         func() time.Time
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
	return a, nil
}

// Enabled reports whether requests must authenticate.
func (a *Authenticator) Enabled() bool { return a != nil && a.enabled }

// Principal is an authenticated client.
type Principal struct {
	Kind    string // "api_key" or "jwt"
	Name    string // key name or JWT subject
	Role    string // JWT role
	targets []string
	proxy   bool // may use the proxy at all
}

// Authenticate resolves a bearer token: an exact API key first (compared in
// constant time against every key), then a local HS256 JWT.
func (a *Authenticator) Authenticate(token string) (*Principal, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, ErrMissing
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
	claims, err := a.verifyJWT(token)
	if err != nil {
		return nil, err
	}
	role := claims.Role
	if !claims.hasRole {
		role = a.defaultRole
	}
	p := &Principal{Kind: "jwt", Name: claims.Sub, Role: role}
	if r, ok := a.roles[role]; ok {
		p.targets = r.Targets
		if p.targets == nil {
			p.targets = []string{"*"}
		}
		p.proxy = slices.Contains(r.Permissions, "read")
	}
	return p, nil
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

// verifyJWT checks a compact HS256 JWT signed with the configured secret
// and returns its claims. Claim names are matched exactly (JSON's own
// rule; encoding/json would match "ROLE" to role), a name given twice in
// the header or the payload is refused (which one wins differs between
// parsers), exp is required and may not be further away than the
// maximum lifetime, and iss and aud are checked.
func (a *Authenticator) verifyJWT(tok string) (*claims, error) {
	if len(a.secret) == 0 {
		return nil, ErrInvalid
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, ErrInvalid
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, ErrInvalid
	}
	hdr, err := objectFields(hb)
	if err != nil {
		return nil, invalid("header: " + err.Error())
	}
	var alg string
	if json.Unmarshal(hdr["alg"], &alg) != nil || alg != "HS256" {
		return nil, invalid("alg is not HS256")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, ErrInvalid
	}
	mac := hmac.New(sha256.New, a.secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return nil, ErrInvalid
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, ErrInvalid
	}
	f, err := objectFields(pb)
	if err != nil {
		return nil, invalid("payload: " + err.Error())
	}
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
	now := float64(a.now().Unix())
	exp, ok, err := numClaim(f, "exp")
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, invalid("no exp")
	case now >= exp:
		return nil, errExpired
	case exp-now > a.maxLifetime.Seconds():
		return nil, invalid("exp beyond the maximum lifetime")
	}
	if nbf, ok, err := numClaim(f, "nbf"); err != nil {
		return nil, err
	} else if ok && now < nbf {
		return nil, invalid("not valid yet (nbf)")
	}
	if iat, ok, err := numClaim(f, "iat"); err != nil {
		return nil, err
	} else if ok && exp-iat > a.maxLifetime.Seconds() {
		return nil, invalid("exp beyond the maximum lifetime after iat")
	}
	if err := a.checkIssuer(f); err != nil {
		return nil, err
	}
	if err := a.checkAudience(f); err != nil {
		return nil, err
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

func (a *Authenticator) checkIssuer(f map[string]json.RawMessage) error {
	if a.issuer == "" {
		return nil
	}
	var iss string
	if raw, ok := f["iss"]; !ok || json.Unmarshal(raw, &iss) != nil || iss != a.issuer {
		return invalid("wrong or no iss")
	}
	return nil
}

// checkAudience: with an audience configured, aud (a string or a list of
// strings) must hold it; without, a token that names any aud is refused,
// as PyJWT (proxy-hopper's library) does.
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
	if a.audience == "" {
		if len(auds) > 0 {
			return invalid("aud present but auth.jwtAudience is not set")
		}
		return nil
	}
	if !slices.Contains(auds, a.audience) {
		return invalid("wrong or no aud")
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

// SignJWT makes an HS256 token (for tests and tooling).
func SignJWT(secret string, payload map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	b, _ := json.Marshal(payload)
	p := base64.RawURLEncoding.EncodeToString(b)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(h + "." + p))
	return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
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
