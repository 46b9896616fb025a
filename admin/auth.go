package admin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
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

// session is what the store keeps of one id: when it ends, whether it
// may change anything (its login's token granted write), and its CSRF
// token, which the page sends back in a header with every change.
type session struct {
	expires time.Time
	write   bool
	csrf    string
}

// sessionStore holds random session ids (by their sha256, so a lookup's
// timing says nothing about a valid id) with their session. It is
// bounded: when full, the expired ones go, then the one that would expire
// first.
type sessionStore struct {
	mu  sync.Mutex
	m   map[[sha256.Size]byte]session
	max int
	ttl time.Duration
	now func() time.Time
}

func newSessionStore(ttl time.Duration, maxN int, now func() time.Time) *sessionStore {
	return &sessionStore{m: map[[sha256.Size]byte]session{}, max: maxN, ttl: ttl, now: now}
}

// randomID is 256 random bits, base64url.
func randomID() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// create makes a new id valid for the store's ttl, with its own CSRF token.
func (s *sessionStore) create(write bool) (id string, ses session) {
	id = randomID()
	now := s.now()
	ses = session{expires: now.Add(s.ttl), write: write, csrf: randomID()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max {
		var first [sha256.Size]byte
		var firstExp time.Time
		for k, v := range s.m {
			if !now.Before(v.expires) {
				delete(s.m, k)
				continue
			}
			if firstExp.IsZero() || v.expires.Before(firstExp) {
				first, firstExp = k, v.expires
			}
		}
		if len(s.m) >= s.max {
			delete(s.m, first)
		}
	}
	s.m[sha256.Sum256([]byte(id))] = ses
	return id, ses
}

// get returns id's session if it is live; consume also ends it.
func (s *sessionStore) get(id string, consume bool) (session, bool) {
	if id == "" || len(id) > 128 {
		return session{}, false
	}
	k := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	if !ok {
		return session{}, false
	}
	if consume || !now.Before(v.expires) {
		delete(s.m, k)
	}
	if !now.Before(v.expires) {
		return session{}, false
	}
	return v, true
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

// sessionOf returns the live session of r's cookie, if any.
func (s *Server) sessionOf(r *http.Request) (session, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return session{}, false
	}
	return s.sessions.get(c.Value, false)
}

func (s *Server) cookieOK(r *http.Request) bool {
	_, ok := s.sessionOf(r)
	return ok
}

// CSRFHeader carries a session's CSRF token on every change the page makes.
const CSRFHeader = "X-CSRF-Token"

// crossSite says why a change sent with a session cookie is refused, or
// "" when it may go on: the cookie is sent by the browser on its own, so
// a change also needs the session's CSRF token in CSRFHeader (which only
// the page, served to that session, knows), and must come from this
// origin: Sec-Fetch-Site, when sent, is same-origin, and Origin, when
// sent and not "null", is this host. A request with neither header is not a browser's
// same-origin fetch and is refused as well.
func crossSite(r *http.Request, ses session) string {
	site := r.Header.Get("Sec-Fetch-Site")
	origin := r.Header.Get("Origin")
	if origin == "null" {
		origin = "" // an opaque origin (e.g. under Referrer-Policy no-referrer) says nothing
	}
	switch {
	case site != "" && site != "same-origin":
		return "cross-site request (Sec-Fetch-Site is not same-origin)"
	case origin == "" && site == "":
		return "no Origin or Sec-Fetch-Site header"
	case origin != "" && !sameOrigin(origin, r.Host):
		return "cross-origin request (Origin is not this host)"
	}
	tok := r.Header.Get(CSRFHeader)
	switch {
	case tok == "":
		return "missing " + CSRFHeader + " header"
	case !equal(tok, ses.csrf):
		return "wrong " + CSRFHeader
	}
	return ""
}

// sameOrigin reports whether origin (an Origin header) names host.
func sameOrigin(origin, host string) bool {
	if len(origin) > 300 {
		return false
	}
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" &&
		strings.EqualFold(u.Host, host) && u.Path == "" && u.User == nil
}

// requireToken lets a request through with a bearer token that grants
// what the method needs (read for GET and HEAD, write for the rest): the
// admin token grants both, a JWT what its roles grant, as proxy-hopper's
// admin API. A live session cookie reads; it changes only if the session
// was started with write (admin token, or a JWT whose role has write) and
// the request passes crossSite: the cookie alone never changes anything.
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
		if readOnly && s.open() {
			h.ServeHTTP(w, withAccess(r, readAccess))
			return
		}
		if s.open() {
			writeError(w, http.StatusForbidden, "forbidden", "the admin API is open to read only: to change anything set server.adminToken, or turn auth on and use a JWT with write")
			return
		}
		if ses, ok := s.sessionOf(r); ok {
			switch why := crossSite(r, ses); {
			case readOnly:
				h.ServeHTTP(w, withAccess(r, readAccess))
			case !ses.write:
				writeError(w, http.StatusForbidden, "forbidden", "Permission 'write' required: this session may only read (its login's role has no write)")
			case why != "":
				// Rate-limited: a hostile page can make a logged-in
				// browser send these as often as it likes.
				s.refusals.Log(r.Context(), slog.LevelWarn, "csrf", "admin change refused: not from the status page", "source", authfail.Source(r.RemoteAddr).String(),
					"method", r.Method, "path", truncate(r.URL.Path, 200), "why", why)
				writeError(w, http.StatusForbidden, "csrf", "change refused: "+why+"; changes with the session cookie come from the status page only")
			default:
				h.ServeHTTP(w, withAccess(r, access{all: true}))
			}
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="proxy-hopper admin"`)
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

// truncate cuts s to at most n bytes (for log lines).
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// startSession makes a session and sets its cookie: HttpOnly,
// SameSite=Strict, Secure over TLS (or with SecureCookie), expiring with
// the session.
func (s *Server) startSession(w http.ResponseWriter, r *http.Request, write bool) {
	id, ses := s.sessions.create(write)
	exp := ses.expires
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: id, Path: "/", Expires: exp, MaxAge: int(s.opts.SessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || s.opts.SecureCookie,
	})
	s.log.Info("admin session started", "source", authfail.Source(r.RemoteAddr).String(), "write", write,
		"expires", exp.UTC().Format(time.RFC3339))
}

// login takes the token from the page's form and starts a session.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		s.loginPage(w, http.StatusBadRequest, "The login form could not be read.")
		return
	}
	if foreignForm(r) {
		s.loginPage(w, http.StatusForbidden, "A login from another site is refused.")
		return
	}
	res, acc, wait := s.checkToken(r, r.PostForm.Get("token"), "login form")
	switch {
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
	s.startSession(w, r, acc.can("write"))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// loginLink redeems a one-time link made by POST /api/login-link: it
// starts a session and redirects to the page. The link holds no token.
func (s *Server) loginLink(w http.ResponseWriter, r *http.Request) {
	link, ok := s.links.get(r.URL.Query().Get("ticket"), true)
	if !ok {
		s.loginPage(w, http.StatusUnauthorized, "This login link is invalid, used or expired.")
		return
	}
	s.startSession(w, r, link.write)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// newLoginLink (POST /api/login-link: the bearer token, as every change) makes a link that
// logs a browser in once within a minute, for scripts and bookmarks that
// used /?token=. Only a caller with write gets here, so the session it
// starts may change things too.
func (s *Server) newLoginLink(w http.ResponseWriter, r *http.Request) {
	id, ses := s.links.create(true)
	writeJSON(w, http.StatusCreated, map[string]any{"path": "/login?ticket=" + id, "expiresAt": ses.expires.UTC()})
}

// foreignForm reports whether a form post (login, logout) comes from
// another site by its Sec-Fetch-Site or Origin header. Clients that send
// neither (scripts) are let through: these forms change no pool state.
func foreignForm(r *http.Request) bool {
	site, origin := r.Header.Get("Sec-Fetch-Site"), r.Header.Get("Origin")
	return (site != "" && site != "same-origin" && site != "none") ||
		(origin != "" && origin != "null" && !sameOrigin(origin, r.Host))
}

// logout ends the browser's session on the server and drops its cookie.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if foreignForm(r) {
		writeError(w, http.StatusForbidden, "csrf", "a logout from another site is refused")
		return
	}
	if c, err := r.Cookie(CookieName); err == nil {
		s.sessions.remove(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || s.opts.SecureCookie})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
