package identity

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// applyFixture returns the identity of 10.0.0.1 under cfg, pinned to
// profile, with Set-Cookie values learnt from learnURL.
func applyFixture(t *testing.T, cfg Config, profile, learnURL string, set ...string) *Identity {
	t.Helper()
	cfg.Profile = profile
	f := newFixture(t, cfg, 1)
	id := f.Get("10.0.0.1")
	if len(set) > 0 {
		id.Learn(mustURL(t, learnURL), setCookie(set...))
	}
	return id
}

func fmtHeaders(hs []Header) string {
	var b strings.Builder
	for _, h := range hs {
		fmt.Fprintf(&b, "%s: %s\n", h.Name, h.Value)
	}
	return b.String()
}

// secure returns the profile's https header with name.
func secure(t *testing.T, profile, name string) Header {
	t.Helper()
	p, _ := ProfileByName(profile)
	v, ok := lookup(p.Headers(), name)
	if !ok {
		t.Fatalf("%s has no %s", profile, name)
	}
	return Header{name, v}
}

func TestApply(t *testing.T) {
	chrome := func(name string) Header { return secure(t, "chrome-windows", name) }
	firefox := func(name string) Header { return secure(t, "firefox-linux", name) }
	client := []Header{
		{"user-agent", "curl/8.11"},
		{"Accept", "application/json"},
		{"X-Api-Key", "k1"},
		{"Referer", "https://shop.example.com/list"},
		{"Sec-CH-UA-Full-Version-List", `"Chromium";v="99.0.1"`},
		{"Sec-Fetch-Site", "cross-site"},
		{"Cookie", "theme=dark; sid=client"},
		{"X-Trace", "t1"},
		{"Priority", "u=3"},
	}
	tests := []struct {
		name    string
		cfg     func(*Config)
		profile string
		url     string
		client  []Header
		want    []Header
	}{
		{
			name:    "identity wins, chrome over https",
			profile: "chrome-windows",
			url:     "https://shop.example.com/basket",
			client:  client,
			want: []Header{
				chrome("sec-ch-ua"), chrome("sec-ch-ua-mobile"), chrome("sec-ch-ua-platform"),
				chrome("Upgrade-Insecure-Requests"),
				{"X-Api-Key", "k1"}, {"X-Trace", "t1"},
				chrome("User-Agent"), chrome("Accept"),
				chrome("Sec-Fetch-Site"), chrome("Sec-Fetch-Mode"), chrome("Sec-Fetch-User"), chrome("Sec-Fetch-Dest"),
				{"Referer", "https://shop.example.com/list"},
				chrome("Accept-Encoding"), chrome("Accept-Language"),
				{"Cookie", "theme=dark; sid=client; jar=1"},
			},
		},
		{
			name:    "identity wins, chrome over plain http",
			profile: "chrome-windows",
			url:     "http://shop.example.com/basket",
			client:  client,
			want: []Header{
				chrome("Upgrade-Insecure-Requests"),
				{"X-Api-Key", "k1"}, {"X-Trace", "t1"},
				chrome("User-Agent"), chrome("Accept"),
				{"Referer", "https://shop.example.com/list"},
				{"Accept-Encoding", "gzip, deflate, br"}, chrome("Accept-Language"),
				{"Cookie", "theme=dark; sid=client; jar=1"},
			},
		},
		{
			name:    "preserve client headers, chrome",
			cfg:     func(c *Config) { c.PreserveClientHeaders = true },
			profile: "chrome-windows",
			url:     "https://shop.example.com/basket",
			client:  client,
			want: []Header{
				chrome("sec-ch-ua"), chrome("sec-ch-ua-mobile"), chrome("sec-ch-ua-platform"),
				chrome("Upgrade-Insecure-Requests"),
				{"X-Api-Key", "k1"}, {"Sec-CH-UA-Full-Version-List", `"Chromium";v="99.0.1"`}, {"X-Trace", "t1"}, {"Priority", "u=3"},
				{"User-Agent", "curl/8.11"}, {"Accept", "application/json"},
				{"Sec-Fetch-Site", "cross-site"}, chrome("Sec-Fetch-Mode"), chrome("Sec-Fetch-User"), chrome("Sec-Fetch-Dest"),
				{"Referer", "https://shop.example.com/list"},
				chrome("Accept-Encoding"), chrome("Accept-Language"),
				{"Cookie", "theme=dark; sid=client; jar=1"},
			},
		},
		{
			name:    "identity wins, firefox drops client hints",
			profile: "firefox-linux",
			url:     "https://shop.example.com/basket",
			client:  client,
			want: []Header{
				firefox("User-Agent"), firefox("Accept"), firefox("Accept-Language"), firefox("Accept-Encoding"),
				{"X-Api-Key", "k1"}, {"X-Trace", "t1"},
				{"Referer", "https://shop.example.com/list"},
				{"Cookie", "theme=dark; sid=client; jar=1"},
				firefox("Upgrade-Insecure-Requests"),
				firefox("Sec-Fetch-Dest"), firefox("Sec-Fetch-Mode"), firefox("Sec-Fetch-Site"), firefox("Sec-Fetch-User"),
				firefox("Priority"),
			},
		},
		{
			name:    "preserve client headers, firefox keeps what the client sent",
			cfg:     func(c *Config) { c.PreserveClientHeaders = true },
			profile: "firefox-linux",
			url:     "https://shop.example.com/basket",
			client:  client,
			want: []Header{
				{"User-Agent", "curl/8.11"}, {"Accept", "application/json"}, firefox("Accept-Language"), firefox("Accept-Encoding"),
				{"X-Api-Key", "k1"}, {"Sec-CH-UA-Full-Version-List", `"Chromium";v="99.0.1"`}, {"X-Trace", "t1"},
				{"Referer", "https://shop.example.com/list"},
				{"Cookie", "theme=dark; sid=client; jar=1"},
				firefox("Upgrade-Insecure-Requests"),
				firefox("Sec-Fetch-Dest"), firefox("Sec-Fetch-Mode"), {"Sec-Fetch-Site", "cross-site"}, firefox("Sec-Fetch-User"),
				{"Priority", "u=3"},
			},
		},
		{
			name:    "no client headers (warm-up)",
			profile: "safari-macos",
			url:     "https://shop.example.com/",
			want: append(secureHeaders(t, "safari-macos")[:4:4],
				Header{"Cookie", "jar=1; sid=jar"},
				secure(t, "safari-macos", "Sec-Fetch-Dest"), secure(t, "safari-macos", "Sec-Fetch-Mode"), secure(t, "safari-macos", "Sec-Fetch-Site")),
		},
		{
			name:    "cookies off: client Cookie passes, jar unused",
			cfg:     func(c *Config) { c.Cookies = false },
			profile: "chrome-windows",
			url:     "http://shop.example.com/",
			client:  []Header{{"Cookie", "sid=client"}, {"Cookie", "b=2"}},
			want: []Header{
				chrome("Upgrade-Insecure-Requests"), chrome("User-Agent"), chrome("Accept"),
				{"Accept-Encoding", "gzip, deflate, br"}, chrome("Accept-Language"),
				{"Cookie", "sid=client"}, {"Cookie", "b=2"},
			},
		},
		{
			name:    "identity off: client headers unchanged",
			cfg:     func(c *Config) { c.Enabled = false },
			profile: "chrome-windows",
			url:     "https://shop.example.com/",
			client:  client,
			want:    client,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := enabled()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			id := applyFixture(t, cfg, tt.profile, "https://shop.example.com/", "jar=1; Path=/", "sid=jar; Path=/")
			in := slices.Clone(tt.client)
			got := id.Apply(in, mustURL(t, tt.url))
			if !slices.Equal(in, tt.client) {
				t.Errorf("Apply modified its input")
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Apply\n got:\n%s\nwant:\n%s", fmtHeaders(got), fmtHeaders(tt.want))
			}
		})
	}
}

func secureHeaders(t *testing.T, profile string) []Header {
	p, ok := ProfileByName(profile)
	if !ok {
		t.Fatalf("no profile %s", profile)
	}
	return p.Headers()
}

// TestCookieMerge: the client's Cookie header is merged with the jar's
// cookies, the client winning a name both have.
func TestCookieMerge(t *testing.T) {
	tests := []struct {
		name   string
		jar    []string
		client []string
		want   string // "" = no Cookie header
	}{
		{"neither", nil, nil, ""},
		{"jar only", []string{"a=1", "b=2"}, nil, "a=1; b=2"},
		{"client only", nil, []string{"c=3"}, "c=3"},
		{"both", []string{"a=1"}, []string{"c=3"}, "c=3; a=1"},
		{"client wins a shared name", []string{"a=1", "b=jar"}, []string{"b=client; c=3"}, "b=client; c=3; a=1"},
		{"several client headers become one", []string{"a=1"}, []string{"c=3", "d=4;e=5", ""}, "c=3; d=4; e=5; a=1"},
		{"odd client pairs kept verbatim", nil, []string{`q="x y"; flag; =v`}, `q="x y"; flag; =v`},
		{"quoted jar value", []string{`q="a b"`}, nil, `q="a b"`},
	}
	u := mustURL(t, "https://shop.example.com/")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := applyFixture(t, enabled(), "chrome-windows", u.String(), tt.jar...)
			var client []Header
			for _, c := range tt.client {
				client = append(client, Header{"Cookie", c})
			}
			out := id.Apply(client, u)
			var cookies []string
			for _, h := range out {
				if strings.EqualFold(h.Name, "Cookie") {
					cookies = append(cookies, h.Value)
				}
			}
			switch {
			case tt.want == "" && len(cookies) != 0:
				t.Errorf("Cookie headers %q, want none", cookies)
			case tt.want != "" && !slices.Equal(cookies, []string{tt.want}):
				t.Errorf("Cookie headers %q, want one %q", cookies, tt.want)
			}
		})
	}
}

// TestCookieIsolation: cookies learnt through IP A never go out through IP
// B, whatever the domain or path.
func TestCookieIsolation(t *testing.T) {
	f := newFixture(t, enabled(), 5)
	a, b := f.Get("10.0.0.1"), f.Get("10.0.0.2")
	u := mustURL(t, "https://www.example.com/app/")
	a.Learn(u, setCookie("sid=A; Path=/", "wide=A; Domain=example.com; Path=/", "deep=A"))
	b.Learn(u, setCookie("other=B"))

	for _, get := range []string{"https://www.example.com/app/x", "https://example.com/", "https://www.example.com/"} {
		gu := mustURL(t, get)
		for _, c := range b.Cookies(gu) {
			if strings.HasSuffix(c.Value, "A") {
				t.Errorf("B has A's cookie %s=%s for %s", c.Name, c.Value, get)
			}
		}
		if c, _ := lookup(b.Apply(nil, gu), "Cookie"); strings.Contains(c, "=A") {
			t.Errorf("B sends %q to %s", c, get)
		}
	}
	if got := cookieNames(a.Cookies(mustURL(t, "https://www.example.com/app/x"))); !slices.Contains(got, "sid=A") || slices.Contains(got, "other=B") {
		t.Errorf("A's cookies %v", got)
	}
	// A third IP, created later, starts empty too.
	if got := f.Get("10.0.0.3").Cookies(u); len(got) != 0 {
		t.Errorf("fresh identity has %v", cookieNames(got))
	}
}

// TestJarRFC6265 checks the RFC 6265 behaviours the jar gives each
// identity.
func TestJarRFC6265(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	future := time.Now().Add(24 * time.Hour).UTC().Format(http.TimeFormat)
	type step struct {
		url string
		set []string
	}
	tests := []struct {
		name  string
		steps []step
		get   map[string][]string // URL -> cookies sent
	}{
		{
			name:  "host-only without Domain",
			steps: []step{{"https://www.example.com/", []string{"h=1"}}},
			get: map[string][]string{
				"https://www.example.com/":     {"h=1"},
				"https://sub.www.example.com/": nil,
				"https://example.com/":         nil,
			},
		},
		{
			name:  "Domain covers subdomains",
			steps: []step{{"https://www.example.com/", []string{"d=1; Domain=example.com"}}},
			get: map[string][]string{
				"https://example.com/":       {"d=1"},
				"https://api.example.com/":   {"d=1"},
				"https://example.org/":       nil,
				"https://notexample.com/":    nil,
				"https://www.example.com/x/": {"d=1"},
			},
		},
		{
			name: "foreign Domain and public suffix rejected",
			steps: []step{
				{"https://www.example.com/", []string{"x=1; Domain=other.com"}},
				{"https://www.example.co.uk/", []string{"p=1; Domain=co.uk"}},
			},
			get: map[string][]string{
				"https://other.com/":          nil,
				"https://www.other.co.uk/":    nil,
				"https://www.example.co.uk/":  nil,
				"https://www.example.com/":    nil,
				"https://shop.example.co.uk/": nil,
			},
		},
		{
			name:  "Path",
			steps: []step{{"https://example.com/", []string{"p=1; Path=/app"}}},
			get: map[string][]string{
				"https://example.com/app":         {"p=1"},
				"https://example.com/app/x":       {"p=1"},
				"https://example.com/":            nil,
				"https://example.com/application": nil,
			},
		},
		{
			name:  "default path is the request's directory",
			steps: []step{{"https://example.com/docs/page", []string{"d=1"}}},
			get: map[string][]string{
				"https://example.com/docs/other": {"d=1"},
				"https://example.com/":           nil,
			},
		},
		{
			name:  "longer paths first",
			steps: []step{{"https://example.com/", []string{"a=root; Path=/", "b=deep; Path=/app"}}},
			get:   map[string][]string{"https://example.com/app/": {"b=deep", "a=root"}},
		},
		{
			name: "expiry",
			steps: []step{{"https://example.com/", []string{
				"old=1; Expires=" + past,
				"new=1; Expires=" + future,
				"age=1; Max-Age=3600",
				"zero=1; Max-Age=0",
				"gone=1", "gone=; Max-Age=0",
				"dead=1", "dead=x; Expires=" + past,
			}}},
			get: map[string][]string{"https://example.com/": {"new=1", "age=1"}},
		},
		{
			name:  "Secure only over https",
			steps: []step{{"https://example.com/", []string{"s=1; Secure", "p=1"}}},
			get: map[string][]string{
				"https://example.com/": {"s=1", "p=1"},
				"http://example.com/":  {"p=1"},
			},
		},
		{
			name:  "replaced by name, domain and path",
			steps: []step{{"https://example.com/", []string{"v=1"}}, {"https://example.com/", []string{"v=2"}}},
			get:   map[string][]string{"https://example.com/": {"v=2"}},
		},
		{
			name:  "IP address origins are host-only",
			steps: []step{{"http://192.0.2.7:8080/", []string{"ip=1"}}},
			get: map[string][]string{
				"http://192.0.2.7:9090/": {"ip=1"},
				"http://192.0.2.8:8080/": nil,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, enabled(), 1)
			id := f.Get("10.0.0.1")
			for _, s := range tt.steps {
				id.Learn(mustURL(t, s.url), setCookie(s.set...))
			}
			for get, want := range tt.get {
				// The order among equal-length paths follows creation
				// time, which can tie within a clock tick.
				got := cookieNames(id.Cookies(mustURL(t, get)))
				if tt.name != "longer paths first" {
					slices.Sort(got)
					want = slices.Sorted(slices.Values(want))
				}
				if !slices.Equal(got, want) {
					t.Errorf("cookies for %s = %v, want %v", get, got, want)
				}
			}
			if other := f.Get("10.0.0.2"); len(other.Cookies(mustURL(t, tt.steps[0].url))) != 0 {
				t.Errorf("another IP sees the cookies")
			}
		})
	}
}

func TestLearn(t *testing.T) {
	u := mustURL(t, "https://example.com/")
	t.Run("oversized cookie dropped", func(t *testing.T) {
		id := applyFixture(t, enabled(), "", u.String(), "big="+strings.Repeat("x", maxCookieBytes), "ok=1")
		if got := cookieNames(id.Cookies(u)); !slices.Equal(got, []string{"ok=1"}) {
			t.Errorf("cookies %v", got)
		}
	})
	t.Run("per-response cap", func(t *testing.T) {
		var set []string
		for i := range maxCookiesPerResp + 10 {
			set = append(set, fmt.Sprintf("c%d=1", i))
		}
		id := applyFixture(t, enabled(), "", u.String(), set...)
		if n := len(id.Cookies(u)); n != maxCookiesPerResp {
			t.Errorf("%d cookies kept, want %d", n, maxCookiesPerResp)
		}
	})
	t.Run("total cap", func(t *testing.T) {
		id := applyFixture(t, enabled(), "", u.String())
		for i := range maxCookies/maxCookiesPerResp + 1 {
			var set []string
			for j := range maxCookiesPerResp {
				set = append(set, fmt.Sprintf("c%d_%d=1", i, j))
			}
			id.Learn(u, setCookie(set...))
		}
		if n := len(id.Cookies(u)); n != maxCookies {
			t.Errorf("%d cookies kept, want %d", n, maxCookies)
		}
		// A known cookie can still be updated at the cap.
		id.Learn(u, setCookie("c0_0=2"))
		if c := id.Cookies(u); !slices.ContainsFunc(c, func(c *http.Cookie) bool { return c.Name == "c0_0" && c.Value == "2" }) {
			t.Errorf("cookie not updated at the cap")
		}
	})
	for _, tt := range []struct {
		name string
		cfg  func(*Config)
	}{
		{"cookies off", func(c *Config) { c.Cookies = false }},
		{"identity off", func(c *Config) { c.Enabled = false }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := enabled()
			tt.cfg(&cfg)
			f := newFixture(t, cfg, 1)
			id := f.Get("10.0.0.1")
			id.Learn(u, setCookie("a=1"))
			cfg.Cookies, cfg.Enabled = true, true
			if err := f.Update(cfg); err != nil {
				t.Fatal(err)
			}
			if got := id.Cookies(u); len(got) != 0 {
				t.Errorf("learnt %v", cookieNames(got))
			}
		})
	}
	// No Set-Cookie, nil URL: nothing happens.
	id := applyFixture(t, enabled(), "", u.String())
	id.Learn(u, http.Header{"Content-Type": {"text/html"}})
	id.Learn(nil, setCookie("a=1"))
	if got := id.Cookies(u); len(got) != 0 || id.Cookies(nil) != nil {
		t.Errorf("learnt %v", cookieNames(got))
	}
}

// TestUpdatePreserve: header settings apply to existing identities at once.
func TestUpdatePreserve(t *testing.T) {
	cfg := enabled()
	cfg.Profile = "chrome-windows"
	f := newFixture(t, cfg, 1)
	id := f.Get("10.0.0.1")
	u := mustURL(t, "https://example.com/")
	client := []Header{{"User-Agent", "curl/8.11"}}
	if ua, _ := lookup(id.Apply(client, u), "User-Agent"); ua == "curl/8.11" {
		t.Fatalf("client User-Agent won by default")
	}
	cfg.PreserveClientHeaders = true
	if err := f.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if ua, _ := lookup(id.Apply(client, u), "User-Agent"); ua != "curl/8.11" {
		t.Errorf("User-Agent %q after enabling preserveClientHeaders", ua)
	}
}

// Each principal has its own jar and warm-up on an identity; the jars are
// bounded in number (least recently used dropped) and share the cookie cap.
func TestSessionsPerPrincipal(t *testing.T) {
	u := mustURL(t, "https://www.example.com/")
	cfg := enabled()
	cfg.Warmup = Warmup{Enabled: true, Path: "/"}
	f := newFixture(t, cfg, 5)
	id := f.Get("10.0.0.1")
	a, b := id.Session("key:a"), id.Session("key:b")
	a.Learn(u, setCookie("sid=A"))
	a.MarkWarmedUp()
	if got := b.Cookies(u); len(got) != 0 {
		t.Errorf("principal b has a's cookies %v", cookieNames(got))
	}
	if c, _ := lookup(b.Apply(nil, u), "Cookie"); c != "" {
		t.Errorf("principal b sends %q", c)
	}
	if _, ok := b.WarmupURL(u); !ok {
		t.Errorf("principal b's fresh jar is not warmed up on its own")
	}
	if got := cookieNames(id.Session("key:a").Cookies(u)); !slices.Equal(got, []string{"sid=A"}) {
		t.Errorf("principal a's cookies %v", got)
	}
	if ua, _ := lookup(b.Apply(nil, u), "User-Agent"); ua == "" || !slices.Contains(id.Profile().Headers(), Header{"User-Agent", ua}) {
		t.Errorf("session persona %q is not the IP's", ua)
	}
	// Bounded: maxSessions jars; the least recently used goes first.
	for i := range maxSessions {
		id.Session(fmt.Sprintf("p%d", i)).Learn(u, setCookie("x=1"))
		id.Session("key:a") // keep a recently used
	}
	if n := id.Sessions(); n != maxSessions {
		t.Errorf("%d sessions, want %d", n, maxSessions)
	}
	if got := id.Session("key:a").Cookies(u); len(got) != 1 {
		t.Errorf("recently used session evicted")
	}
	if got := id.Session("key:b").Cookies(u); len(got) != 0 {
		t.Errorf("evicted session came back with %v", cookieNames(got))
	}
	// The cookie cap counts every jar of the identity together.
	for i := range maxCookies/maxCookiesPerResp + 1 {
		var set []string
		for j := range maxCookiesPerResp {
			set = append(set, fmt.Sprintf("c%d_%d=1", i, j))
		}
		id.Session(fmt.Sprintf("q%d", i%2)).Learn(u, setCookie(set...))
	}
	total := 0
	for i := range 2 {
		total += len(id.Session(fmt.Sprintf("q%d", i)).Cookies(u))
	}
	if total > maxCookies {
		t.Errorf("%d cookies over the identity's jars, cap %d", total, maxCookies)
	}
}
