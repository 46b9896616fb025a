package admin

import (
	"bytes"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
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
	"duration":      duration,
	"bytes":         bytesText,
	"pageLink":      pageLink,
	"add":           func(a, b int) int { return a + b },
	"ipBoxes":       ipBoxes,
}).ParseFS(pageFS, "*.tmpl"))

// pageData is what page.html.tmpl renders.
type pageData struct {
	StatusView
	Nonce     string
	RefreshMs int64
	// CanWrite shows the actions (a session that may write); CSRF is its
	// token, which the page's script sends in CSRFHeader.
	CanWrite bool
	CSRF     string
	// Filter is the IP filter of the page's URL (state, q, offset; limit
	// defaults to Options.PageIPs).
	Filter ipFilter
	// States are the filter's state choices.
	States []pool.State
}

// pageLink is the page's URL with the filter f (for the pager).
func pageLink(f ipFilter, offset int) string {
	q := url.Values{}
	if f.state != "" {
		q.Set("state", string(f.state))
	}
	if f.q != "" {
		q.Set("q", f.q)
	}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	if f.limit > 0 {
		q.Set("limit", strconv.Itoa(f.limit))
	}
	if len(q) == 0 {
		return "/"
	}
	return "/?" + q.Encode()
}

// duration prints whole seconds as 3d 4h 5m 6s (largest units first).
func duration(sec int64) string {
	if sec < 0 {
		sec = 0
	}
	var b strings.Builder
	for _, u := range []struct {
		n    int64
		name string
	}{{86400, "d"}, {3600, "h"}, {60, "m"}} {
		if sec >= u.n || b.Len() > 0 {
			fmt.Fprintf(&b, "%d%s ", sec/u.n, u.name)
			sec %= u.n
		}
	}
	fmt.Fprintf(&b, "%ds", sec)
	return b.String()
}

// bytesText prints n bytes with a binary unit.
func bytesText(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
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
	// A bearer token shows the page read-only: actions need a session.
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
	f, err := parseFilter(r.URL.Query(), s.opts.PageIPs)
	if err != nil {
		s.loginPage(w, http.StatusBadRequest, "Bad filter: "+err.Error())
		return
	}
	if f.limit == 0 || f.limit > maxPageIPs {
		f.limit = maxPageIPs
	}
	data := pageData{Nonce: nonce(), RefreshMs: s.opts.RefreshInterval.Milliseconds(), Filter: f, States: States}
	if ses, ok := s.sessionOf(r); ok && ses.write {
		data.CanWrite, data.CSRF = true, ses.csrf
	}
	data.StatusView = s.status(r.Context(), f)
	s.render(w, http.StatusOK, "page.html.tmpl", data, data.Nonce)
}

// maxPageIPs bounds the IPs per target one page lists.
const maxPageIPs = 2000

func (s *Server) loginPage(w http.ResponseWriter, status int, msg string) {
	n := nonce()
	s.render(w, status, "login.html.tmpl", map[string]string{"Message": msg}, n)
}
