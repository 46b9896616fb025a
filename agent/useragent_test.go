package agent_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestReloadSpoofUserAgent drives spoofUserAgent from the config file
// through a real tinyproxy to an origin that echoes the User-Agent it got:
// proxy-hopper's default (on) sends a browser's instead of the client's; a
// reload turning it off lets the client's through at once; with an identity
// the IP's profile's goes out; the override header wins throughout.
func TestReloadSpoofUserAgent(t *testing.T) {
	t.Parallel()
	o := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Join(r.Header.Values("User-Agent"), "|"))
	}))
	t.Cleanup(o.Close)
	server, mport := rlServer(t, "")
	ips := rdUpstreams(t, 1) // the same IP throughout: only spoofUserAgent changes
	web := func(extra string) rlTarget {
		return rlTarget{name: "web", regex: regexp.QuoteMeta(o.URL), ips: ips, extra: extra}
	}
	var browsers []string
	for _, p := range identity.Profiles() {
		browsers = append(browsers, p.UserAgent())
	}
	ra := startRLAgent(t, server, mport, web(""))
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	get := func(override string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", ra.proxyURL.String()+"/ua", nil)
		req.Header.Set(proxy.HeaderTarget, o.URL)
		req.Header.Set("User-Agent", "curl/7.88.1")
		if override != "" {
			req.Header.Set(proxy.HeaderUserAgent, override)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		return string(b)
	}

	if ua := get(""); !slices.Contains(browsers, ua) {
		t.Errorf("default config: origin saw %q, want a browser's User-Agent", ua)
	}
	if ua := get("bot/1"); ua != "bot/1" {
		t.Errorf("default config with override: origin saw %q", ua)
	}

	res := ra.reload(web("    spoofUserAgent: false\n"))
	if !slices.Contains(res.Changed, "web") {
		t.Errorf("reload result %+v: want web changed", res)
	}
	if ua := get(""); ua != "curl/7.88.1" {
		t.Errorf("after reload to spoofUserAgent: false: origin saw %q, want the client's", ua)
	}
	if ua := get("bot/1"); ua != "bot/1" {
		t.Errorf("spoofUserAgent false with override: origin saw %q", ua)
	}

	ra.reload(web("    identity: {enabled: true, profile: firefox-linux, preserveClientHeaders: true}\n"))
	ff, _ := identity.ProfileByName("firefox-linux")
	for range 3 {
		if ua := get(""); ua != ff.UserAgent() {
			t.Fatalf("identity on, spoofUserAgent default: origin saw %q, want the profile's %q", ua, ff.UserAgent())
		}
	}
}
