package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/proxy-hopper/proxy-hopper/internal/authfail"
)

// DefaultJWTExpiry is the lifetime of a login's JWT when Config.JWTExpiry
// is not set (proxy-hopper's jwtExpiryMinutes: 60).
const DefaultJWTExpiry = 60 * time.Minute

// DefaultAdminRole is the role of an admin user without one.
const DefaultAdminRole = "admin"

// HashCost is the bcrypt cost of HashPassword (proxy-hopper's: 12).
const HashCost = 12

// Login errors.
var (
	// ErrLoginNotConfigured: no admin user (POST /auth/login answers 404).
	ErrLoginNotConfigured = errors.New("local authentication is not configured")
	// ErrBadCredentials: wrong user name or password (401).
	ErrBadCredentials = errors.New("incorrect username or password")
)

// AdminUser is a local user who may log in (auth.admin).
type AdminUser struct {
	Username     string
	PasswordHash string // bcrypt ($2a$, $2b$ or $2y$)
	Role         string // default DefaultAdminRole
}

type admin struct {
	user [sha256.Size]byte
	name string
	hash []byte
	role string
}

// HashPassword returns the bcrypt hash of password for auth.admin.passwordHash.
// bcrypt reads at most 72 bytes: a longer password is refused.
func HashPassword(password string) (string, error) { return hashPassword(password, HashCost) }

func hashPassword(password string, cost int) (string, error) {
	if password == "" {
		return "", errors.New("hash password: the password is empty")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// CheckPasswordHash reports why h is not a bcrypt hash usable as
// auth.admin.passwordHash (nil when it is).
func CheckPasswordHash(h string) error {
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return errors.New("not a bcrypt hash (make one with `proxy-hopper hash-password`)")
	}
	return nil
}

// RandomSecret is a fresh JWT signing secret (64 hex digits), for when
// auth.jwtSecret is not set: tokens signed with it do not outlive it.
func RandomSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// setAdmins checks the admin users and what their tokens need.
func (a *Authenticator) setAdmins(cfg Config) error {
	a.compare = bcrypt.CompareHashAndPassword
	a.jwtExpiry = cfg.JWTExpiry
	if a.jwtExpiry <= 0 {
		a.jwtExpiry = DefaultJWTExpiry
	}
	if len(cfg.Admins) == 0 {
		return nil
	}
	if a.jwtExpiry > a.maxLifetime {
		return fmt.Errorf("auth.jwtExpiryMinutes (%d) is longer than auth.jwtMaxLifetime (%s): the JWTs /auth/login issues would be refused; raise jwtMaxLifetime or lower jwtExpiryMinutes",
			int(a.jwtExpiry.Minutes()), a.maxLifetime)
	}
	if len(a.secret) == 0 {
		// As proxy-hopper: a random secret; logins then last until the
		// authenticator is rebuilt. The agent passes one secret across
		// reloads (RandomSecret) instead.
		a.secret = []byte(RandomSecret())
	}
	for i, u := range cfg.Admins {
		if u.Username == "" {
			return fmt.Errorf("auth.admin[%d]: username is required", i)
		}
		if err := CheckPasswordHash(u.PasswordHash); err != nil {
			return fmt.Errorf("auth.admin (%s): passwordHash: %w", u.Username, err)
		}
		role := u.Role
		if role == "" {
			role = DefaultAdminRole
		}
		a.admins = append(a.admins, admin{user: sha256.Sum256([]byte(u.Username)), name: u.Username, hash: []byte(u.PasswordHash), role: role})
	}
	return nil
}

// LoginConfigured reports whether a has an admin user.
func (a *Authenticator) LoginConfigured() bool { return a.Enabled() && len(a.admins) > 0 }

// Login checks username and password against the admin users and returns
// a local JWT (HS256; sub, role, iat, exp = now + JWTExpiry; iss and aud
// when auth.jwtIssuer / jwtAudience are set, so that it verifies here).
// Its timing does not tell a known user name from an unknown one: every
// name is compared in constant time, and bcrypt always runs, against the
// first admin's hash when the name is unknown.
func (a *Authenticator) Login(username, password string) (token string, err error) {
	if !a.LoginConfigured() {
		return "", ErrLoginNotConfigured
	}
	sum := sha256.Sum256([]byte(username))
	var found *admin
	for i := range a.admins {
		if subtle.ConstantTimeCompare(sum[:], a.admins[i].user[:]) == 1 && found == nil {
			found = &a.admins[i]
		}
	}
	hash := a.admins[0].hash
	if found != nil {
		hash = found.hash
	}
	if a.compare(hash, []byte(password)) != nil || found == nil {
		return "", ErrBadCredentials
	}
	return a.issue(found.name, found.role)
}

// issue signs a local JWT for sub with role.
func (a *Authenticator) issue(sub, role string) (string, error) {
	now := a.now().Unix()
	c := jwt.MapClaims{"sub": sub, "role": role, "iat": now, "exp": now + int64(a.jwtExpiry/time.Second)}
	if a.issuer != "" {
		c["iss"] = a.issuer
	}
	if a.audience != "" {
		c["aud"] = a.audience
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(a.secret)
	if err != nil {
		return "", fmt.Errorf("sign JWT: %w", err)
	}
	return s, nil
}

// Defaults of LoginOptions.
const (
	DefaultLoginBurst       = 5
	DefaultLoginEvery       = 12 * time.Second // 5 failures a minute once the burst is used
	DefaultLoginConcurrency = 2
	DefaultLoginQueueWait   = 5 * time.Second
	maxLoginBody            = 8 << 10
)

// LoginOptions configures NewLoginHandler.
type LoginOptions struct {
	// Burst failed logins a client (an IPv4 address, an IPv6 /64) may make
	// at once, then one more per Every (DefaultLoginBurst, DefaultLoginEvery).
	Burst int
	Every time.Duration
	// Concurrency is how many password checks (bcrypt, ~0.2s of CPU
	// each) run at once (DefaultLoginConcurrency); a login waits at most
	// QueueWait (DefaultLoginQueueWait) for its turn, then gets 503.
	Concurrency int
	QueueWait   time.Duration
	Log         *slog.Logger // default slog.Default()
	Now         func() time.Time
}

// LoginHandler serves POST /auth/login. Safe for concurrent use.
type LoginHandler struct {
	auth  func() *Authenticator
	fails *authfail.Limiter
	sem   chan struct{}
	wait  time.Duration
	log   *slog.Logger
}

// NewLoginHandler returns the handler of POST /auth/login for the
// Authenticator current returns at each request (nil: not configured).
func NewLoginHandler(current func() *Authenticator, o LoginOptions) *LoginHandler {
	if o.Burst <= 0 {
		o.Burst = DefaultLoginBurst
	}
	if o.Every <= 0 {
		o.Every = DefaultLoginEvery
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultLoginConcurrency
	}
	if o.QueueWait <= 0 {
		o.QueueWait = DefaultLoginQueueWait
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &LoginHandler{
		auth:  current,
		fails: authfail.New(authfail.Options{Burst: o.Burst, Every: o.Every, What: "admin login", Log: o.Log, Now: o.Now}),
		sem:   make(chan struct{}, o.Concurrency),
		wait:  o.QueueWait,
		log:   o.Log,
	}
}

// detail answers {"detail": v}, proxy-hopper's (FastAPI's) error shape.
func detail(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"detail": v})
}

// fieldError is one entry of a 422 answer (FastAPI's validation shape).
type fieldError struct {
	Type  string   `json:"type"`
	Loc   []string `json:"loc"`
	Msg   string   `json:"msg"`
	Input any      `json:"input"`
}

func (h *LoginHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		detail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
		return
	}
	a := h.auth()
	if !a.LoginConfigured() {
		detail(w, http.StatusNotFound, "Local authentication is not configured")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/x-www-form-urlencoded" {
		if err := r.ParseForm(); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				detail(w, http.StatusRequestEntityTooLarge, "Request body too large")
				return
			}
			detail(w, http.StatusBadRequest, "There was an error parsing the body")
			return
		}
	}
	var missing []fieldError
	for _, f := range []string{"username", "password"} {
		if _, ok := r.PostForm[f]; !ok {
			missing = append(missing, fieldError{Type: "missing", Loc: []string{"body", f}, Msg: "Field required"})
		}
	}
	if gt, ok := r.PostForm["grant_type"]; ok && gt[0] != "password" {
		missing = append(missing, fieldError{Type: "string_pattern_mismatch", Loc: []string{"body", "grant_type"},
			Msg: "String should match pattern '^password$'", Input: gt[0]})
	}
	if missing != nil {
		detail(w, http.StatusUnprocessableEntity, missing)
		return
	}
	src := authfail.Source(r.RemoteAddr)
	wait, ok := h.fails.Take(src)
	if !ok {
		h.fails.Refused(src)
		secs := strconv.Itoa(int(math.Ceil(wait.Seconds())))
		w.Header().Set("Retry-After", secs)
		detail(w, http.StatusTooManyRequests, "Too many failed logins from this address; retry after "+secs+"s")
		return
	}
	if !h.acquire(r.Context()) {
		h.fails.Succeeded(src) // not checked: the attempt is given back
		w.Header().Set("Retry-After", "1")
		detail(w, http.StatusServiceUnavailable, "Too many logins at once; retry shortly")
		return
	}
	tok, err := a.Login(r.PostForm.Get("username"), r.PostForm.Get("password"))
	<-h.sem
	switch {
	case errors.Is(err, ErrBadCredentials):
		h.fails.Failed(src, "wrong username or password")
		w.Header().Set("WWW-Authenticate", "Bearer")
		detail(w, http.StatusUnauthorized, "Incorrect username or password")
		return
	case err != nil:
		h.fails.Succeeded(src)
		h.log.Error("admin login: cannot issue a token", "err", err)
		detail(w, http.StatusInternalServerError, "Internal Server Error")
		return
	}
	h.fails.Succeeded(src)
	h.log.Info("admin login", "user", r.PostForm.Get("username"), "source", src.String())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "token_type": "bearer"})
}

// acquire waits for a password-check slot, at most h.wait.
func (h *LoginHandler) acquire(ctx context.Context) bool {
	select {
	case h.sem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(h.wait)
	defer t.Stop()
	select {
	case h.sem <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}
