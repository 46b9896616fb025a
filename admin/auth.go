package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// CookieName is the status page's session cookie.
const CookieName = "ph_admin"

// sessionValue is what the session cookie holds: an HMAC of a fixed label
// keyed by the token, so the browser never stores the token itself and a
// new token ends every session.
func sessionValue(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("proxy-hopper admin session v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// equal compares secrets in constant time (hashing first hides the length).
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// bearer returns the token of an Authorization: Bearer header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

func (s *Server) tokenOK(tok string) bool { return equal(tok, s.opts.Token) }

func (s *Server) cookieOK(r *http.Request) bool {
	c, err := r.Cookie(CookieName)
	return err == nil && equal(c.Value, s.session)
}

// requireToken lets a request through with the right bearer token, or with
// the session cookie when it only reads (GET, HEAD): a cookie is sent by
// the browser on its own, so it must not be enough to change anything.
func (s *Server) requireToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, hasHeader := bearer(r)
		switch {
		case hasHeader && s.tokenOK(tok):
			h.ServeHTTP(w, r)
			return
		case !hasHeader && (r.Method == http.MethodGet || r.Method == http.MethodHead) && s.cookieOK(r):
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="proxy-hopper admin"`)
		switch {
		case hasHeader:
			writeError(w, http.StatusUnauthorized, "unauthorized", "wrong admin token")
		case s.cookieOK(r):
			writeError(w, http.StatusUnauthorized, "unauthorized", "changes need the Authorization: Bearer <admin token> header; the page's session cookie only reads")
		default:
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing admin token: send Authorization: Bearer <admin token>")
		}
	})
}

func (s *Server) setSession(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: s.session, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// login takes the token from the page's form and sets the session cookie.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		s.loginPage(w, http.StatusBadRequest, "The login form could not be read.")
		return
	}
	if !s.tokenOK(r.PostForm.Get("token")) {
		s.loginPage(w, http.StatusUnauthorized, "Wrong admin token.")
		return
	}
	s.setSession(w, r)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout ends the browser session.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
