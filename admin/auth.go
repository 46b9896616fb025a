package admin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/internal/authfail"
)

// CookieName is the status page's session cookie.
const CookieName = "ph_admin"

// Defaults of the session store.
const (
	DefaultSessionTTL = 12 * time.Hour
	DefaultMaxSession = 1000
	loginLinkTTL      = time.Minute
	maxLoginLinks     = 100
)

// sessionStore holds random session ids (by their sha256, so a lookup's
// timing says nothing about a valid id) with their expiry. It is bounded:
// when full, the expired ones go, then the one that would expire first.
type sessionStore struct {
	mu  sync.Mutex
	m   map[[sha256.Size]byte]time.Time
	max int
	ttl time.Duration
	now func() time.Time
}

func newSessionStore(ttl time.Duration, maxN int, now func() time.Time) *sessionStore {
	return &sessionStore{m: map[[sha256.Size]byte]time.Time{}, max: maxN, ttl: ttl, now: now}
}

// create makes a new id (256 random bits) valid for the store's ttl.
func (s *sessionStore) create() (id string, expires time.Time) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	id = base64.RawURLEncoding.EncodeToString(b[:])
	now := s.now()
	expires = now.Add(s.ttl)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max {
		var first [sha256.Size]byte
		var firstExp time.Time
		for k, exp := range s.m {
			if !now.Before(exp) {
				delete(s.m, k)
				continue
			}
			if firstExp.IsZero() || exp.Before(firstExp) {
				first, firstExp = k, exp
			}
		}
		if len(s.m) >= s.max {
			delete(s.m, first)
		}
	}
	s.m[sha256.Sum256([]byte(id))] = expires
	return id, expires
}

// valid reports whether id is a live session; consume also ends it.
func (s *sessionStore) valid(id string, consume bool) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	k := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.m[k]
	if !ok {
		return false
	}
	if consume || !now.Before(exp) {
		delete(s.m, k)
	}
	return now.Before(exp)
}

func (s *sessionStore) remove(id string) {
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

func (s *sessionStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// equal compares secrets in constant time (hashing first hides the length).
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// bearer returns the token of an Authorization: Bearer header (the scheme
// is case-insensitive, RFC 7235).
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// tokenCheck is the outcome of checking a token a client sent.
type tokenCheck int

const (
	tokenOK tokenCheck = iota
	tokenWrong
	tokenLimited // the source has used up its failures: not checked
)

// Authenticator resolves bearer tokens other than Options.Token: auth's
// JWTs (local, from POST /auth/login, and OIDC) and API keys, whose
// principals carry the permissions of their roles.
type Authenticator interface {
	Enabled() bool
	Verify(ctx context.Context, token string) (*auth.Principal, error)
}

// access is what a checked token may do: everything (the static admin
// token, or anyone when the API is open), or what a principal's roles grant.
type access struct {
	all      bool
	p        *auth.Principal
	readOnly bool // a session cookie, the open API, or a GraphQL GET: reads only
}

// can reports whether a may use a permission (read, write).
func (a access) can(perm string) bool {
	if a.readOnly && perm != "read" {
		return false
	}
	return a.all || a.p.Can(perm)
}

// withAccess hands the caller's access to the handlers.
func withAccess(r *http.Request, a access) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), accessKey{}, a))
}

// readAccess is what a session cookie or the open API grants.
var readAccess = access{all: true, readOnly: true}

// authOn reports whether auth's tokens are accepted here.
func (s *Server) authOn() bool { return s.opts.Auth != nil && s.opts.Auth.Enabled() }

// open reports whether the API has no guard at all (no admin token, auth
// off): then anyone may read, and nobody may change anything.
func (s *Server) open() bool { return s.opts.Token == "" && !s.authOn() }

// checkToken checks tok from r's source under the failure limit, logging
// failures; for tokenLimited it returns how long until the next attempt.
func (s *Server) checkToken(r *http.Request, tok, via string) (tokenCheck, access, time.Duration) {
	src := authfail.Source(r.RemoteAddr)
	if wait, ok := s.fails.Take(src); !ok {
		s.fails.Refused(src)
		return tokenLimited, access{}, wait
	}
	if s.opts.Token != "" && equal(tok, s.opts.Token) {
		s.fails.Succeeded(src)
		return tokenOK, access{all: true}, 0
	}
	if s.authOn() {
		p, err := s.opts.Auth.Verify(r.Context(), tok)
		if err == nil {
			s.fails.Succeeded(src)
			return tokenOK, access{p: p}, 0
		}
		s.fails.Failed(src, "token refused ("+via+"): "+auth.Reason(err))
		return tokenWrong, access{}, 0
	}
	s.fails.Failed(src, "wrong token ("+via+")")
	return tokenWrong, access{}, 0
}

// refuseToken answers a token checkToken did not accept.
func (s *Server) refuseToken(w http.ResponseWriter, res tokenCheck, wait time.Duration) {
	if res == tokenLimited {
		tooMany(w, wait)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="proxy-hopper admin", error="invalid_token"`)
	detail := "wrong admin token"
	if s.authOn() {
		detail = "invalid token: send Authorization: Bearer with the admin token or a JWT (POST /auth/login, or your OIDC issuer's)"
		if s.opts.Token == "" {
			detail = "invalid token: send Authorization: Bearer with a JWT (POST /auth/login, or your OIDC issuer's)"
		}
	}
	writeError(w, http.StatusUnauthorized, "unauthorized", detail)
}

// tooMany answers 429 with Retry-After.
func tooMany(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", retryAfter(wait))
	writeError(w, http.StatusTooManyRequests, "too_many_failures",
		"too many failed admin token attempts from this address; retry after "+retryAfter(wait)+"s")
}

func retryAfter(wait time.Duration) string {
	return strconv.Itoa(int(math.Ceil(wait.Seconds())))
}

func (s *Server) sessionOf(r *http.Request) (string, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return "", false
	}
	return c.Value, s.sessions.valid(c.Value, false)
}

func (s *Server) cookieOK(r *http.Request) bool {
	_, ok := s.sessionOf(r)
	return ok
}

// requireToken lets a request through with a bearer token that grants
// what the method needs (read for GET and HEAD, write for the rest): the
// admin token grants both, a JWT what its roles grant, as proxy-hopper's
// admin API. A live session cookie is enough to read: a cookie is sent by
// the browser on its own, so it must not be enough to change anything.
// With no admin token and auth off the API is open to read and refuses
// changes. Wrong tokens count against the source; past the limit, 429.
func (s *Server) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		readOnly := r.Method == http.MethodGet || r.Method == http.MethodHead
		need := "write"
		if readOnly {
			need = "read"
		}
		tok, hasHeader := bearer(r)
		if hasHeader && !s.open() {
			res, acc, wait := s.checkToken(r, tok, "header")
			switch {
			case res != tokenOK:
				s.refuseToken(w, res, wait)
			case !acc.can(need):
				writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("Permission '%s' required", need))
			default:
				h.ServeHTTP(w, withAccess(r, acc))
			}
			return
		}
		if readOnly && (s.open() || s.cookieOK(r)) {
			h.ServeHTTP(w, withAccess(r, readAccess))
			return
		}
		if s.open() {
			writeError(w, http.StatusForbidden, "forbidden", "the admin API is open to read only: to change anything set server.adminToken, or turn auth on and use a JWT with write")
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="proxy-hopper admin"`)
		if s.cookieOK(r) {
			writeError(w, http.StatusUnauthorized, "unauthorized", "changes need the Authorization: Bearer header (admin token or a JWT with write); the page's session cookie only reads")
			return
		}
		what := "<admin token>"
		switch {
		case s.authOn() && s.opts.Token != "":
			what = "<admin token or JWT>"
		case s.authOn():
			what = "<JWT>"
		}
		writeError(w, http.StatusUnauthorized, "unauthorized", "missing token: send Authorization: Bearer "+what)
	})
}

// requireCaller lets through any caller with a valid token or session
// (or anyone when the API is open), handing its access to h, which checks
// the permission each operation needs (GraphQL: read for queries, write
// for mutations). A session cookie only ever reads.
func (s *Server) requireCaller(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, hasHeader := bearer(r)
		switch {
		case s.open():
			h.ServeHTTP(w, withAccess(r, readAccess))
		case hasHeader:
			res, acc, wait := s.checkToken(r, tok, "header")
			if res != tokenOK {
				s.refuseToken(w, res, wait)
				return
			}
			h.ServeHTTP(w, withAccess(r, acc))
		case s.cookieOK(r):
			h.ServeHTTP(w, withAccess(r, readAccess))
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="proxy-hopper admin"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "Authentication required")
		}
	})
}

// startSession makes a session and sets its cookie: HttpOnly,
// SameSite=Strict, Secure over TLS (or with SecureCookie), expiring with
// the session.
func (s *Server) startSession(w http.ResponseWriter, r *http.Request) {
	id, exp := s.sessions.create()
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: id, Path: "/", Expires: exp, MaxAge: int(s.opts.SessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || s.opts.SecureCookie,
	})
	s.log.Info("admin session started", "source", authfail.Source(r.RemoteAddr).String(), "expires", exp.UTC().Format(time.RFC3339))
}

// login takes the token from the page's form and starts a session.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		s.loginPage(w, http.StatusBadRequest, "The login form could not be read.")
		return
	}
	switch res, acc, wait := s.checkToken(r, r.PostForm.Get("token"), "login form"); {
	case res == tokenLimited:
		w.Header().Set("Retry-After", retryAfter(wait))
		s.loginPage(w, http.StatusTooManyRequests, fmt.Sprintf("Too many failed logins from this address; try again in %ss.", retryAfter(wait)))
		return
	case res == tokenWrong:
		s.loginPage(w, http.StatusUnauthorized, "Wrong token.")
		return
	case !acc.can("read"):
		s.loginPage(w, http.StatusForbidden, "This token's role has no read permission.")
		return
	}
	s.startSession(w, r)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// loginLink redeems a one-time link made by POST /api/login-link: it
// starts a session and redirects to the page. The link holds no token.
func (s *Server) loginLink(w http.ResponseWriter, r *http.Request) {
	if !s.links.valid(r.URL.Query().Get("ticket"), true) {
		s.loginPage(w, http.StatusUnauthorized, "This login link is invalid, used or expired.")
		return
	}
	s.startSession(w, r)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// newLoginLink (POST /api/login-link: the bearer token, as every change) makes a link that
// logs a browser in once within a minute, for scripts and bookmarks that
// used /?token=.
func (s *Server) newLoginLink(w http.ResponseWriter, r *http.Request) {
	id, exp := s.links.create()
	writeJSON(w, http.StatusCreated, map[string]any{"path": "/login?ticket=" + id, "expiresAt": exp.UTC()})
}

// logout ends the browser's session on the server and drops its cookie.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		s.sessions.remove(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || s.opts.SecureCookie})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
