package agent

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestMetricsTagCardinalityEndToEnd drives an agent with auth on and
// server.metricsTagLimit 10 with thousands of distinct X-Proxy-Hopper-Tag
// values, refused (no credentials) and admitted (a valid key, through a
// real tinyproxy): /metrics keeps at most 10 tags plus "other" for the
// target, none for refused requests, and stops growing.
func TestMetricsTagCardinalityEndToEnd(t *testing.T) {
	const limit, refused, admitted = 10, 2000, 300
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello")
	}))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	cfgPath, metricsPort := writeMetricsConfig(t, fmt.Sprintf(`
  metricsTagLimit: %d
  shutdownTimeout: 2s
  probe: false
auth:
  enabled: true
  apiKeys: [{name: ci, key: ci-key-for-tests}]
targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipList: ["%s"]
    minRequestInterval: 0
    maxQueueWait: 5s
`, limit, tp.Addr))
	_, ln, metricsAddr, _ := runMetricsAgent(t, cfgPath, metricsPort)

	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func(tag, token string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
		req.Header.Set(proxy.HeaderTarget, origin.URL)
		req.Header.Set(proxy.HeaderTag, tag)
		if token != "" {
			req.Header.Set(proxy.HeaderAuth, "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	scrape := func() string {
		t.Helper()
		resp, err := client.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// scrapeAfter scrapes once the request hooks (run just after each
	// answer) have counted want requests of outcome.
	scrapeAfter := func(outcome string, want int) string {
		t.Helper()
		re := regexp.MustCompile(`proxy_hopper_client_requests_total\{outcome="` + outcome + `",tag="[^"]*",target="[^"]*"\} (\d+)`)
		var body string
		testenv.Eventually(t, 5*time.Second, func() error {
			body = scrape()
			n := 0
			for _, m := range re.FindAllStringSubmatch(body, -1) {
				var v int
				fmt.Sscan(m[1], &v)
				n += v
			}
			if n != want {
				return fmt.Errorf("still waiting for %d %s requests counted", want, outcome)
			}
			return nil
		})
		return body
	}
	round := func(r int) string {
		for i := range refused {
			if code := get(fmt.Sprintf("r%d-refused-%d", r, i), ""); code != 401 {
				t.Fatalf("request without a token: %d, want 401", code)
			}
		}
		for i := range admitted {
			if code := get(fmt.Sprintf("r%d-admitted-%d", r, i), "ci-key-for-tests"); code != 200 {
				t.Fatalf("request with the key: %d, want 200", code)
			}
		}
		scrapeAfter("auth_failed", (r+1)*refused)
		return scrapeAfter("success", (r+1)*admitted)
	}
	first := round(0)
	second := round(1)
	if grown := len(second) - len(first); grown > 1024 {
		t.Errorf("/metrics grew by %d bytes (%d → %d) in a second round of %d new tags", grown, len(first), len(second), refused+admitted)
	}
	tags := map[string]map[string]bool{} // target → tag values
	re := regexp.MustCompile(`proxy_hopper_(?:client_requests|responses)_total\{[^}]*tag="([^"]*)",target="([^"]*)"\}`)
	for _, m := range re.FindAllStringSubmatch(second, -1) {
		if tags[m[2]] == nil {
			tags[m[2]] = map[string]bool{}
		}
		tags[m[2]][m[1]] = true
	}
	if web := tags["web"]; len(web) != limit+1 || !web["other"] {
		t.Errorf("target web has %d tag values, want %d with \"other\": %v", len(web), limit+1, web)
	}
	if none := tags[""]; len(none) != 1 || !none[""] {
		t.Errorf("refused requests carry tags %v, want none", none)
	}
	for _, want := range []string{
		fmt.Sprintf(`proxy_hopper_client_requests_total{outcome="auth_failed",tag="",target=""} %d`, 2*refused),
		fmt.Sprintf(`proxy_hopper_auth_failures_total{reason="missing"} %d`, 2*refused),
		fmt.Sprintf(`proxy_hopper_client_requests_total{outcome="success",tag="other",target="web"} %d`, 2*admitted-limit),
	} {
		if !strings.Contains(second, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	t.Logf("/metrics: %d bytes after round 1, %d after round 2", len(first), len(second))
}
