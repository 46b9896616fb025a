package admin

import (
	"bytes"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

//go:embed page.html.tmpl login.html.tmpl
var pageFS embed.FS

// stateColours are the fill of an IP box by state (also in the page's JS).
var stateColours = map[pool.State]string{
	pool.StateAvailable:   "#2e7d32",
	pool.StateInUse:       "#1565c0",
	pool.StateCooling:     "#f9a825",
	pool.StateQuarantined: "#c62828",
}

// outcomeColours colour the outcome mix (also in the page's JS).
var outcomeColours = map[string]string{
	"success":          "#2e7d32",
	"rate_limited":     "#f9a825",
	"server_error":     "#ef6c00",
	"connection_error": "#c62828",
	"no_match":         "#757575",
}

func outcomeColour(o string) string {
	if c, ok := outcomeColours[o]; ok {
		return c
	}
	return "#6a1b9a"
}

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"stateColour":   func(s pool.State) string { return stateColours[s] },
	"outcomeColour": outcomeColour,
	"clock":         func(t time.Time) string { return t.UTC().Format("15:04:05") },
	"rate":          func(f float64) string { return fmt.Sprintf("%.2f", f) },
	"ms":            func(f float64) string { return fmt.Sprintf("%.0f", f) },
	"sparkline":     sparkline,
	"states":        func() []pool.State { return States },
	"mix":           mix,
}).ParseFS(pageFS, "*.tmpl"))

// pageData is what page.html.tmpl renders.
type pageData struct {
	StatusView
	Nonce     string
	RefreshMs int64
}

// segment is one outcome's share of the outcome bar.
type segment struct {
	Outcome string
	Count   uint64
	X, W    float64 // percent of the bar
}

// mix lays out the outcome bar, largest outcome first.
func mix(counts map[string]uint64) []segment {
	var total uint64
	out := make([]segment, 0, len(counts))
	for o, n := range counts {
		total += n
		out = append(out, segment{Outcome: o, Count: n})
	}
	slices.SortFunc(out, func(a, b segment) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Outcome, b.Outcome)
	})
	x := 0.0
	for i := range out {
		out[i].X = x
		out[i].W = 100 * float64(out[i].Count) / float64(total)
		x += out[i].W
	}
	return out
}

// sparkline is the SVG polyline of requests per second in a 300x40 box.
func sparkline(series []int) string {
	peak := 1
	for _, n := range series {
		peak = max(peak, n)
	}
	var b strings.Builder
	for i, n := range series {
		x := 300 * float64(i) / float64(max(len(series)-1, 1))
		y := 38 - 36*float64(n)/float64(peak)
		fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
	}
	return strings.TrimSpace(b.String())
}

func nonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

func (s *Server) render(w http.ResponseWriter, status int, name string, data any, n string) {
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, name, data); err != nil {
		s.log.Error("render page", "template", name, "err", err)
		http.Error(w, "render page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+n+"'; style-src 'unsafe-inline'; "+
		"connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// page is the status page: / with a live session cookie (or a bearer
// token); otherwise it shows the login form. A token in the URL
// (/?token=) is refused unread: URLs end up in history, logs and Referer.
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Has("token") {
		s.loginPage(w, http.StatusBadRequest, "A token in the URL is not accepted: log in with this form, "+
			"or make a one-time link with POST /api/login-link.")
		return
	}
	authed := s.open() || s.cookieOK(r)
	if tok, hasHeader := bearer(r); hasHeader && !authed {
		switch res, acc, wait := s.checkToken(r, tok, "header"); res {
		case tokenLimited:
			w.Header().Set("Retry-After", retryAfter(wait))
			s.loginPage(w, http.StatusTooManyRequests, "Too many failed attempts from this address.")
			return
		case tokenOK:
			authed = acc.can("read")
		}
	}
	if !authed {
		w.Header().Set("WWW-Authenticate", `Bearer realm="proxy-hopper admin"`)
		s.loginPage(w, http.StatusUnauthorized, "")
		return
	}
	n := nonce()
	s.render(w, http.StatusOK, "page.html.tmpl", pageData{
		StatusView: s.status(r.Context()), Nonce: n, RefreshMs: s.opts.RefreshInterval.Milliseconds(),
	}, n)
}

func (s *Server) loginPage(w http.ResponseWriter, status int, msg string) {
	n := nonce()
	s.render(w, status, "login.html.tmpl", map[string]string{"Message": msg}, n)
}
