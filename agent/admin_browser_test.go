package agent

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// TestStatusPageInChromium drives traffic through a running agent,
// quarantines an IP through the API, then loads the status page in
// headless Chromium (the page logs in with a one-time login link, then its script
// redraws from /api/status) and checks what the DOM shows.
func TestStatusPageInChromium(t *testing.T) {
	testenv.Chromium(t)
	a := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	b := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, "", oneTarget(a.Addr, b.Addr))

	for range 6 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	e.api("POST", "/api/targets/web/ips/"+a.Addr+"/quarantine", `{"seconds": 600}`, 200)
	for range 2 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	var status admin.StatusView
	testenv.Eventually(t, 5*time.Second, func() error {
		json.Unmarshal([]byte(e.api("GET", "/api/status", "", 200)), &status)
		if status.Traffic.Requests != 8 {
			return errors.New("still waiting for 8 requests recorded")
		}
		return nil
	})
	ipA, _ := findIP(status.Targets[0], a.Addr)
	ipB, _ := findIP(status.Targets[0], b.Addr)
	if ipA.Requests+ipB.Requests != 8 || ipA.Requests == 0 || ipA.State != pool.StateQuarantined {
		t.Fatalf("API before the browser: a %+v, b %+v", ipA, ipB)
	}

	start := time.Now()
	var link struct{ Path string }
	json.Unmarshal([]byte(e.api("POST", "/api/login-link", "", 201)), &link)
	doc := testenv.DumpDOM(t, e.base+link.Path, 5*time.Second)
	t.Logf("chromium took %s", time.Since(start).Round(time.Millisecond))
	dom := testenv.ParseDOM(t, doc)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
	}
	body := dom.All(testenv.Where("body"))
	if len(body) != 1 {
		t.Fatalf("no page body (login form?):\n%.2000s", doc)
	}
	if n, _ := testenv.Attr(body[0], "data-refreshes"); atoi(n) < 1 {
		t.Fatalf("the page's script never redrew it (data-refreshes=%q):\n%.3000s", n, doc)
	}
	targets := dom.All(testenv.Where("div", "class", "target", "data-target", "web"))
	if len(targets) != 1 {
		t.Fatalf("target web drawn %d times:\n%.3000s", len(targets), doc)
	}
	web := testenv.Under(targets[0])
	for _, c := range []struct {
		addr, state string
		colour      []string
		requests    uint64
		text        string
	}{
		{a.Addr, "quarantined", []string{"#c62828", "rgb(198, 40, 40)"}, ipA.Requests, "quarantined until"},
		{b.Addr, "available", []string{"#2e7d32", "rgb(46, 125, 50)"}, ipB.Requests, "available"},
	} {
		boxes := web.All(testenv.Where("div", "data-ip", c.addr))
		if len(boxes) != 1 {
			fail("IP %s drawn %d times", c.addr, len(boxes))
			continue
		}
		box := boxes[0]
		if st, _ := testenv.Attr(box, "data-state"); st != c.state || !testenv.HasClass(box, "state-"+c.state) {
			fail("IP %s: data-state %q class %v, want %s", c.addr, st, box.Attr, c.state)
		}
		style, _ := testenv.Attr(box, "style")
		if !strings.Contains(style, c.colour[0]) && !strings.Contains(style, c.colour[1]) {
			fail("IP %s: style %q, want colour %s", c.addr, style, c.colour[0])
		}
		if n, _ := testenv.Attr(box, "data-requests"); n != strconv.FormatUint(c.requests, 10) {
			fail("IP %s: data-requests %q, want %d", c.addr, n, c.requests)
		}
		text := testenv.Text(box)
		if !strings.Contains(text, c.text) || !strings.Contains(text, strconv.FormatUint(c.requests, 10)+" req") {
			fail("IP %s: text %q", c.addr, text)
		}
	}
	if len(web.All(testenv.Where("span", "data-state", "quarantined", "data-count", "1"))) != 1 ||
		len(web.All(testenv.Where("span", "data-state", "available", "data-count", "1"))) != 1 {
		fail("state counts of web not drawn")
	}
	events := dom.All(testenv.Where("li", "data-kind", "quarantined", "data-target", "web", "data-ip", a.Addr))
	if len(events) != 1 || !strings.Contains(testenv.Text(events[0]), "quarantined web "+a.Addr+" until") {
		fail("quarantine event drawn %d times", len(events))
	}
	if len(dom.All(testenv.Where("li", "data-outcome", "success", "data-count", "8"))) != 1 ||
		len(dom.All(testenv.Where("rect", "data-outcome", "success", "data-count", "8"))) != 1 {
		fail("outcome mix does not show 8 successes")
	}
	if len(dom.All(testenv.Where("div", "id", "rate", "data-total", "8"))) != 1 {
		fail("request rate does not count 8 requests")
	}
	if t.Failed() {
		t.Logf("DOM:\n%.6000s", doc)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
