package identity

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// TestBrandList checks the sec-ch-ua derivation against values real Chrome
// releases sent.
func TestBrandList(t *testing.T) {
	tests := []struct {
		major int
		want  string
	}{
		{120, `"Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"`},
		{124, `"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"`},
		{130, `"Chromium";v="130", "Google Chrome";v="130", "Not?A_Brand";v="99"`},
		{131, `"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"`},
		{133, `"Not(A:Brand";v="99", "Google Chrome";v="133", "Chromium";v="133"`},
		{138, `"Not)A;Brand";v="8", "Chromium";v="138", "Google Chrome";v="138"`},
		{143, `"Google Chrome";v="143", "Chromium";v="143", "Not A(Brand";v="24"`},
		{150, `"Not;A=Brand";v="8", "Chromium";v="150", "Google Chrome";v="150"`},
		{151, `"Not=A?Brand";v="99", "Google Chrome";v="151", "Chromium";v="151"`},
		{152, `"Chromium";v="152", "Not?A_Brand";v="24", "Google Chrome";v="152"`},
	}
	for _, tt := range tests {
		if got := brandList("Google Chrome", tt.major); got != tt.want {
			t.Errorf("brandList(%d) = %s, want %s", tt.major, got, tt.want)
		}
	}
}

var (
	chromeRE = regexp.MustCompile(`Chrome/(\d+)\.0\.0\.0 Safari/537\.36`)
	edgeRE   = regexp.MustCompile(`Edg/(\d+)\.0\.0\.0$`)
	brandRE  = regexp.MustCompile(`"([^"]+)";v="(\d+)"`)
)

func TestProfilesComplete(t *testing.T) {
	ps := Profiles()
	if len(ps) < 5 {
		t.Fatalf("%d profiles, want at least 5", len(ps))
	}
	if !slices.IsSortedFunc(ps, func(a, b Profile) int { return strings.Compare(a.Name(), b.Name()) }) {
		t.Errorf("Profiles() not sorted by name")
	}
	seen := map[string]bool{}
	for _, p := range ps {
		t.Run(p.Name(), func(t *testing.T) {
			if p.Name() == "" || seen[p.Name()] {
				t.Fatalf("empty or duplicate name %q", p.Name())
			}
			seen[p.Name()] = true
			if q, ok := ProfileByName(p.Name()); !ok || q.Name() != p.Name() {
				t.Errorf("ProfileByName(%q) = %v, %v", p.Name(), q, ok)
			}
			hs := p.Headers()
			get := func(name string) (string, bool) { return lookup(hs, name) }
			for _, name := range []string{"User-Agent", "Accept", "Accept-Language", "Accept-Encoding"} {
				if v, ok := get(name); !ok || v == "" {
					t.Errorf("no %s", name)
				}
			}

			// Every header is one the identity owns, appears once, and has
			// its place in the browser order, in that order.
			pos := -1
			for _, h := range hs {
				if !fingerprint(h.Name) {
					t.Errorf("%s is not an identity-owned header", h.Name)
				}
				i := slices.Index(p.order, h.Name)
				if i < 0 {
					t.Errorf("%s has no place in the order", h.Name)
					continue
				}
				if i <= pos {
					t.Errorf("%s out of browser order", h.Name)
				}
				pos = i
			}
			if n := strings.Count(strings.Join(p.order, "\n")+"\n", extras+"\n"); n != 1 {
				t.Errorf("order has %d extras slots, want 1", n)
			}

			ua, _ := get("User-Agent")
			m := chromeRE.FindStringSubmatch(ua)
			if m == nil {
				// Not Chromium: no client hints at all.
				for _, h := range hs {
					if hasPrefixFold(h.Name, "sec-ch-") {
						t.Errorf("non-Chromium profile sends %s", h.Name)
					}
				}
				return
			}
			major := m[1]
			brand := "Google Chrome"
			if e := edgeRE.FindStringSubmatch(ua); e != nil {
				brand = "Microsoft Edge"
				if e[1] != major {
					t.Errorf("Edg/%s with Chrome/%s", e[1], major)
				}
			}
			wantNames := []string{
				"sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "Upgrade-Insecure-Requests",
				"User-Agent", "Accept", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-User", "Sec-Fetch-Dest",
				"Accept-Encoding", "Accept-Language",
			}
			var names []string
			for _, h := range hs {
				names = append(names, h.Name)
			}
			if !slices.Equal(names, wantNames) {
				t.Errorf("Chromium header order\n got %q\nwant %q", names, wantNames)
			}

			chua, _ := get("sec-ch-ua")
			brands := map[string]string{}
			for _, b := range brandRE.FindAllStringSubmatch(chua, -1) {
				brands[b[1]] = b[2]
			}
			if len(brands) != 3 || brands[brand] != major || brands["Chromium"] != major {
				t.Errorf("sec-ch-ua %s does not match %s %s", chua, brand, major)
			}
			if chua != brandList(brand, chromeMajor) {
				t.Errorf("sec-ch-ua %s, want the derived %s", chua, brandList(brand, chromeMajor))
			}
			if v, _ := get("sec-ch-ua-mobile"); v != "?0" {
				t.Errorf("sec-ch-ua-mobile %q on a desktop UA", v)
			}
			var platform string
			switch {
			case strings.Contains(ua, "(Windows NT"):
				platform = `"Windows"`
			case strings.Contains(ua, "(Macintosh;"):
				platform = `"macOS"`
			case strings.Contains(ua, "(X11; Linux"):
				platform = `"Linux"`
			}
			if v, _ := get("sec-ch-ua-platform"); platform == "" || v != platform {
				t.Errorf("sec-ch-ua-platform %s for UA %s", v, ua)
			}
			for name, want := range map[string]string{
				"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-User": "?1",
				"Sec-Fetch-Dest": "document", "Upgrade-Insecure-Requests": "1",
			} {
				if v, _ := get(name); v != want {
					t.Errorf("%s = %q, want %q", name, v, want)
				}
			}
		})
	}
	if _, ok := ProfileByName("netscape-beos"); ok {
		t.Errorf("ProfileByName found an unknown profile")
	}
}

func TestProfileImmutable(t *testing.T) {
	p, _ := ProfileByName("chrome-windows")
	hs := p.Headers()
	hs[0].Value = "changed"
	hs = p.HeadersFor(&url.URL{Scheme: "http", Host: "example.com"})
	hs[0].Value = "changed"
	if v := p.Headers()[0].Value; v == "changed" {
		t.Errorf("Headers() shares the profile's storage")
	}
	q, _ := ProfileByName("chrome-windows")
	if q.Headers()[0].Value == "changed" {
		t.Errorf("ProfileByName shares storage between calls")
	}
}

func TestHeadersForOrigins(t *testing.T) {
	tests := []struct {
		url    string
		secure bool
	}{
		{"https://example.com/", true},
		{"HTTPS://example.com/", true},
		{"http://example.com/", false},
		{"http://10.0.0.1:8080/", false},
		{"http://localhost:8080/", true},
		{"http://app.localhost/", true},
		{"http://127.0.0.1:8080/", true},
		{"http://127.9.9.9/", true},
		{"http://[::1]:80/", true},
		{"http://[::ffff:127.0.0.1]/", true},
		{"http://localhost.example.com/", false},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := trustworthy(u); got != tt.secure {
			t.Errorf("trustworthy(%s) = %v, want %v", tt.url, got, tt.secure)
		}
		for _, p := range Profiles() {
			hs := p.HeadersFor(u)
			if tt.secure {
				if !slices.Equal(hs, p.Headers()) {
					t.Errorf("%s to %s: %v, want the secure set", p.Name(), tt.url, hs)
				}
				continue
			}
			for _, h := range hs {
				if hasPrefixFold(h.Name, "sec-") {
					t.Errorf("%s sends %s to %s", p.Name(), h.Name, tt.url)
				}
				if h.Name == "Accept-Encoding" && strings.Contains(h.Value, "zstd") {
					t.Errorf("%s advertises zstd to %s", p.Name(), tt.url)
				}
			}
		}
	}
	if p, _ := ProfileByName("chrome-windows"); !slices.Equal(p.HeadersFor(nil), p.Headers()) {
		t.Errorf("HeadersFor(nil) is not the secure set")
	}
}

// TestProfilesGolden pins every profile's exact headers, to https and to a
// plain-http origin. Run with -update after a deliberate change and review
// the diff.
func TestProfilesGolden(t *testing.T) {
	var b strings.Builder
	plain := &url.URL{Scheme: "http", Host: "example.com"}
	for _, p := range Profiles() {
		for _, o := range []struct {
			label string
			hs    []Header
		}{{"https", p.Headers()}, {"http", p.HeadersFor(plain)}} {
			fmt.Fprintf(&b, "== %s %s\n", p.Name(), o.label)
			for _, h := range o.hs {
				fmt.Fprintf(&b, "%s: %s\n", h.Name, h.Value)
			}
		}
	}
	const path = "testdata/profiles.golden"
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if got := b.String(); got != string(want) {
		t.Errorf("profiles differ from %s (go test -update to accept):\n%s", path, got)
	}
}

// TestProfileUserAgent checks UserAgent against the header the profile
// sends, to secure and plain-http origins alike.
func TestProfileUserAgent(t *testing.T) {
	for _, p := range Profiles() {
		ua := p.UserAgent()
		if !strings.HasPrefix(ua, "Mozilla/5.0 (") {
			t.Errorf("%s: UserAgent() = %q, want a browser User-Agent", p.Name(), ua)
		}
		for _, u := range []*url.URL{nil, {Scheme: "http", Host: "example.com"}} {
			var sent []string
			for _, h := range p.HeadersFor(u) {
				if strings.EqualFold(h.Name, "User-Agent") {
					sent = append(sent, h.Value)
				}
			}
			if len(sent) != 1 || sent[0] != ua {
				t.Errorf("%s to %v: sends User-Agent %q, UserAgent() = %q", p.Name(), u, sent, ua)
			}
		}
	}
	if ua := (Profile{}).UserAgent(); ua != "" {
		t.Errorf("zero Profile: UserAgent() = %q, want empty", ua)
	}
}
