package identity

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// Browser versions the built-in profiles claim. Raise them as the browsers
// release (Chrome and Firefox every four weeks): a stale version is itself a
// fingerprint. Chromium client hints are derived from chromeMajor.
const (
	chromeMajor   = 154
	firefoxMajor  = 157
	safariVersion = "27.0"
)

// Header is one field of an ordered header list. It has the shape of
// proxy.Field, so the proxy converts element by element: identity.Header(f).
type Header struct {
	Name  string
	Value string
}

// Profile is an immutable browser fingerprint: the headers one browser on
// one OS sends for a top-level navigation typed into the address bar, in the
// order it sends them, plus where that browser puts the headers the
// identity does not own (Cookie, Referer, Origin, Content-Type, ...).
//
// The zero Profile has no name and no headers.
type Profile struct {
	name   string
	fields []profileField
	// order lists header names in the browser's order, identity-owned or
	// not; "*" marks where headers the browser has no known place for go.
	order []string
}

// profileField is one identity header. Browsers send some headers to
// potentially trustworthy origins only (https, localhost, loopback): the
// Chromium client hints, Fetch Metadata, and the br/zstd content codings.
type profileField struct {
	Header
	secureOnly bool   // not sent to other origins
	insecure   string // value for other origins; "" means Value
}

// extras marks the slot in Profile.order for headers with no known place.
const extras = "*"

// Name returns the profile's name, e.g. "chrome-windows".
func (p Profile) Name() string { return p.name }

// String returns the profile's name.
func (p Profile) String() string { return p.name }

// Headers returns the profile's headers in send order, as sent to a secure
// (https) origin. The slice is a copy.
func (p Profile) Headers() []Header {
	out := make([]Header, len(p.fields))
	for i, f := range p.fields {
		out[i] = f.Header
	}
	return out
}

// HeadersFor returns the profile's headers in send order as the browser
// sends them to u: to an origin that is not potentially trustworthy (plain
// http other than localhost and loopback) it sends no client hints and no
// Sec-Fetch-* headers, and advertises fewer content codings. A nil u counts
// as secure. The slice is a copy.
func (p Profile) HeadersFor(u *url.URL) []Header {
	secure := trustworthy(u)
	out := make([]Header, 0, len(p.fields))
	for _, f := range p.fields {
		switch {
		case secure:
			out = append(out, f.Header)
		case f.secureOnly:
		case f.insecure != "":
			out = append(out, Header{f.Name, f.insecure})
		default:
			out = append(out, f.Header)
		}
	}
	return out
}

// UserAgent returns the User-Agent the profile sends ("" for the zero
// Profile). It is the same to every origin.
func (p Profile) UserAgent() string {
	for _, f := range p.fields {
		if strings.EqualFold(f.Name, "User-Agent") {
			return f.Value
		}
	}
	return ""
}

// Profiles returns the built-in profiles, sorted by name.
func Profiles() []Profile {
	return []Profile{
		chromium("chrome-macos", "Google Chrome", "Macintosh; Intel Mac OS X 10_15_7", "macOS", ""),
		chromium("chrome-windows", "Google Chrome", "Windows NT 10.0; Win64; x64", "Windows", ""),
		chromium("edge-windows", "Microsoft Edge", "Windows NT 10.0; Win64; x64", "Windows", fmt.Sprintf(" Edg/%d.0.0.0", chromeMajor)),
		firefox("firefox-linux", "X11; Linux x86_64"),
		firefox("firefox-windows", "Windows NT 10.0; Win64; x64"),
		safari("safari-macos"),
	}
}

// ProfileByName returns the built-in profile called name.
func ProfileByName(name string) (Profile, bool) {
	for _, p := range Profiles() {
		if p.name == name {
			return p, true
		}
	}
	return Profile{}, false
}

// profileNames lists the built-in profile names, for error messages.
func profileNames() string {
	ps := Profiles()
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.name
	}
	return strings.Join(names, ", ")
}

// chromium builds a Chrome or Edge desktop profile. HTTP/1.1 order of a
// typed navigation: client hints, Upgrade-Insecure-Requests, User-Agent,
// Accept, Fetch Metadata, then the encodings and languages. Headers a page
// adds (fetch/XHR) land before User-Agent.
func chromium(name, brand, uaPlatform, chPlatform, uaSuffix string) Profile {
	ua := fmt.Sprintf("Mozilla/5.0 (%s) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.0.0 Safari/537.36%s", uaPlatform, chromeMajor, uaSuffix)
	return Profile{
		name: name,
		fields: []profileField{
			{Header: Header{"sec-ch-ua", brandList(brand, chromeMajor)}, secureOnly: true},
			{Header: Header{"sec-ch-ua-mobile", "?0"}, secureOnly: true},
			{Header: Header{"sec-ch-ua-platform", `"` + chPlatform + `"`}, secureOnly: true},
			{Header: Header{"Upgrade-Insecure-Requests", "1"}},
			{Header: Header{"User-Agent", ua}},
			{Header: Header{"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"}},
			{Header: Header{"Sec-Fetch-Site", "none"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-Mode", "navigate"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-User", "?1"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-Dest", "document"}, secureOnly: true},
			{Header: Header{"Accept-Encoding", "gzip, deflate, br, zstd"}, insecure: "gzip, deflate, br"},
			{Header: Header{"Accept-Language", "en-US,en;q=0.9"}},
		},
		order: []string{
			"Content-Length", "Pragma", "Cache-Control",
			"sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
			"Upgrade-Insecure-Requests", "Origin", "Content-Type", extras,
			"User-Agent", "Accept",
			"Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-User", "Sec-Fetch-Dest",
			"Referer", "Accept-Encoding", "Accept-Language", "Cookie",
		},
	}
}

// firefox builds a Firefox desktop profile. Firefox sends Priority over
// HTTP/1.1 as well; headers a page adds land after Accept-Encoding.
func firefox(name, uaPlatform string) Profile {
	ua := fmt.Sprintf("Mozilla/5.0 (%s; rv:%d.0) Gecko/20100101 Firefox/%d.0", uaPlatform, firefoxMajor, firefoxMajor)
	return Profile{
		name: name,
		fields: []profileField{
			{Header: Header{"User-Agent", ua}},
			{Header: Header{"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}},
			{Header: Header{"Accept-Language", "en-US,en;q=0.5"}},
			{Header: Header{"Accept-Encoding", "gzip, deflate, br, zstd"}, insecure: "gzip, deflate"},
			{Header: Header{"Upgrade-Insecure-Requests", "1"}},
			{Header: Header{"Sec-Fetch-Dest", "document"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-Mode", "navigate"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-Site", "none"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-User", "?1"}, secureOnly: true},
			{Header: Header{"Priority", "u=0, i"}},
		},
		order: []string{
			"User-Agent", "Accept", "Accept-Language", "Accept-Encoding", extras,
			"Content-Type", "Content-Length", "Origin", "Referer", "Cookie",
			"Upgrade-Insecure-Requests",
			"Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Sec-Fetch-User",
			"Priority", "Pragma", "Cache-Control",
		},
	}
}

// safari builds the Safari on macOS profile. Safari freezes the macOS and
// WebKit versions in its User-Agent, sends no Sec-Fetch-User, and does not
// advertise zstd.
func safari(name string) Profile {
	ua := "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/" + safariVersion + " Safari/605.1.15"
	return Profile{
		name: name,
		fields: []profileField{
			{Header: Header{"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}},
			{Header: Header{"User-Agent", ua}},
			{Header: Header{"Accept-Encoding", "gzip, deflate, br"}, insecure: "gzip, deflate"},
			{Header: Header{"Accept-Language", "en-US,en;q=0.9"}},
			{Header: Header{"Sec-Fetch-Dest", "document"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-Mode", "navigate"}, secureOnly: true},
			{Header: Header{"Sec-Fetch-Site", "none"}, secureOnly: true},
		},
		order: []string{
			"Referer", "Origin", "Content-Type", "Accept", "User-Agent", "Content-Length",
			"Accept-Encoding", "Accept-Language", "Cookie",
			"Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site", extras,
			"Pragma", "Cache-Control",
		},
	}
}

// brandList returns the sec-ch-ua value Chromium major version major sends
// for brand. Chromium derives the GREASE brand, its version and the order
// of the three entries from the major version alone, so the value is stable
// for a release and differs between releases.
func brandList(brand string, major int) string {
	const greaseChars = " (:-./);=?_"
	greaseVersions := [3]string{"8", "99", "24"}
	orders := [6][3]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}

	o := orders[major%len(orders)]
	var list [3]string
	list[o[0]] = fmt.Sprintf(`"Not%cA%cBrand";v="%s"`, greaseChars[major%len(greaseChars)], greaseChars[(major+1)%len(greaseChars)], greaseVersions[major%len(greaseVersions)])
	list[o[1]] = fmt.Sprintf(`"Chromium";v="%d"`, major)
	list[o[2]] = fmt.Sprintf(`"%s";v="%d"`, brand, major)
	return strings.Join(list[:], ", ")
}

// trustworthy reports whether browsers treat u as a potentially trustworthy
// origin: https (or wss), localhost, or a loopback address. Nil counts as
// trustworthy.
func trustworthy(u *url.URL) bool {
	if u == nil {
		return true
	}
	switch strings.ToLower(u.Scheme) {
	case "https", "wss":
		return true
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
