package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
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

// TestStatusPageActionsInChromium logs in headless Chromium with a
// one-time link (a session that may write) and clicks through the page:
// quarantine and release an IP, add one, remove one; each change shows on
// the page and in the pool. The page shows why IPs are quarantined: 429
// for one whose upstream really answers 429, admin action for the one
// quarantined from the page.
func TestStatusPageActionsInChromium(t *testing.T) {
	testenv.Chromium(t)
	a := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	b := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	c := testenv.StartTinyproxy(t, "127.0.0.4", testenv.TinyproxyOptions{})
	// An upstream proxy that answers every request 429.
	ln, err := net.Listen("tcp", "127.0.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	limited := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "60")
		http.Error(w, "slow down", http.StatusTooManyRequests)
	}))
	limited.Listener = ln
	limited.Start()
	t.Cleanup(limited.Close)
	r429 := ln.Addr().String()
	e := startAdminAgent(t, "", oneTarget(a.Addr, b.Addr, r429))

	// Traffic until the 429 upstream is quarantined (the request is
	// retried on another IP and succeeds).
	testenv.Eventually(t, 10*time.Second, func() error {
		if code := e.fetch("/x"); code != 200 {
			return fmt.Errorf("request: %d", code)
		}
		if ip, _ := findIP(e.target("web"), r429); ip.State != pool.StateQuarantined {
			return errors.New("the 429 upstream is not quarantined yet")
		}
		return nil
	})
	if ip, _ := findIP(e.target("web"), r429); ip.QuarantineReason != "status_429" {
		t.Fatalf("API: 429 upstream quarantined with reason %q, want status_429", ip.QuarantineReason)
	}

	var link struct{ Path string }
	json.Unmarshal([]byte(e.api("POST", "/api/login-link", "", 201)), &link)
	br := testenv.StartBrowser(t)
	br.Navigate(e.base + link.Path)
	br.WaitFor(`Number(document.body.dataset.refreshes) >= 1`, 10*time.Second)
	box := func(addr string) string {
		return fmt.Sprintf(`document.querySelector('#targets div.ip[data-ip="%s"]')`, addr)
	}
	var shown struct{ Reason, Text string }
	br.Eval(fmt.Sprintf(`({reason: %[1]s.dataset.reason, text: %[1]s.querySelector(".reason").textContent})`, box(r429)), &shown)
	if shown.Reason != "status_429" || !strings.Contains(shown.Text, "rate limited") || !strings.Contains(shown.Text, "429") {
		t.Errorf("429 upstream on the page: %+v", shown)
	}
	click := func(action, addr string) {
		t.Helper()
		br.Eval(fmt.Sprintf(`document.querySelector('button[data-action="%s"][data-ip="%s"]').click()`, action, addr), nil)
	}
	waitDone := func(n int) {
		t.Helper()
		br.WaitFor(fmt.Sprintf(`Number(document.body.dataset.actions) >= %d`, n), 10*time.Second)
		var res struct{ OK, Text string }
		br.Eval(`({ok: document.getElementById("action-result").dataset.ok, text: document.getElementById("action-result").textContent})`, &res)
		if res.OK != "true" {
			t.Fatalf("action %d failed on the page: %s", n, res.Text)
		}
	}

	// Quarantine a from the page.
	click("quarantine", a.Addr)
	waitDone(1)
	br.WaitFor(box(a.Addr)+`.dataset.state === "quarantined"`, 5*time.Second)
	br.Eval(fmt.Sprintf(`({reason: %[1]s.dataset.reason, text: %[1]s.querySelector(".reason").textContent})`, box(a.Addr)), &shown)
	if ip, _ := findIP(e.target("web"), a.Addr); ip.State != pool.StateQuarantined || ip.QuarantineReason != admin.CauseAdmin ||
		shown.Reason != admin.CauseAdmin || shown.Text != "admin action" {
		t.Fatalf("after quarantine from the page: pool %+v, page %+v", ip, shown)
	}
	br.WaitFor(fmt.Sprintf(`document.querySelector('#events li[data-ip="%s"][data-reason="admin"]')`, a.Addr), 5*time.Second)
	br.WaitFor(fmt.Sprintf(`document.querySelector('#events li[data-ip="%s"][data-reason="status_429"]')`, r429), 5*time.Second)

	// Release it.
	click("release", a.Addr)
	waitDone(2)
	br.WaitFor(box(a.Addr)+`.dataset.state === "available"`, 5*time.Second)
	if ip, _ := findIP(e.target("web"), a.Addr); ip.State != pool.StateAvailable {
		t.Fatalf("after release from the page: %+v", ip)
	}

	// Add c through the form.
	br.Eval(fmt.Sprintf(`(() => { const f = document.getElementById("add-ip"); f.elements.target.value = "web"; f.elements.address.value = %q; f.requestSubmit(); })()`, c.Addr), nil)
	waitDone(3)
	br.WaitFor(box(c.Addr)+` !== null`, 5*time.Second)
	if ip, ok := findIP(e.target("web"), c.Addr); !ok || ip.State != pool.StateAvailable {
		t.Fatalf("after adding %s from the page: %+v %v", c.Addr, ip, ok)
	}

	// Remove b.
	click("remove", b.Addr)
	waitDone(4)
	br.WaitFor(box(b.Addr)+` === null`, 5*time.Second)
	if _, ok := findIP(e.target("web"), b.Addr); ok {
		t.Fatalf("%s still in the pool after its removal from the page", b.Addr)
	}
	// The pool serves through what the page left: a and c.
	for range 4 {
		if code := e.fetch("/x"); code != 200 {
			t.Fatalf("request after the changes: %d", code)
		}
	}
	if ip, _ := findIP(e.target("web"), c.Addr); ip.Requests == 0 {
		t.Errorf("the added IP took no request")
	}
	// A wrong CSRF token from the page's own origin is refused.
	var code int
	br.Eval(fmt.Sprintf(`fetch("/api/targets/web/ips/%s/quarantine", {method: "POST", headers: {"X-CSRF-Token": "forged"}}).then(r => r.status)`, a.Addr), &code)
	if code != 403 {
		t.Errorf("a change with a forged CSRF token from the page: %d, want 403", code)
	}
}
