package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// seriesWant is one line of testdata/original-dashboard-series.txt: a
// metric and the labels a dashboard query needs on one of its series.
type seriesWant struct {
	line   string
	name   string
	has    []string          // labels present
	equal  map[string]string // label=value
	differ map[string]string // label!=value
}

func readSeriesWants(t *testing.T, path string) []seriesWant {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []seriesWant
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		w := seriesWant{line: line, name: fields[0], equal: map[string]string{}, differ: map[string]string{}}
		for _, l := range fields[1:] {
			if k, v, ok := strings.Cut(l, "!="); ok {
				w.differ[k] = v
				w.has = append(w.has, k)
			} else if k, v, ok := strings.Cut(l, "="); ok {
				w.equal[k] = v
				w.has = append(w.has, k)
			} else {
				w.has = append(w.has, l)
			}
		}
		out = append(out, w)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("%s lists no series", path)
	}
	return out
}

// found reports whether the families hold a series w asks for.
func (w seriesWant) found(fams map[string]*dto.MetricFamily) bool {
	base := w.name
	bucket := strings.HasSuffix(base, "_bucket")
	if bucket {
		base = strings.TrimSuffix(base, "_bucket")
	}
	mf := fams[base]
	if mf == nil {
		return false
	}
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		if bucket {
			if m.GetHistogram() == nil || len(m.GetHistogram().GetBucket()) == 0 {
				continue
			}
			labels["le"] = "" // every bucket series has one
		}
		ok := true
		for _, k := range w.has {
			if _, present := labels[k]; !present {
				ok = false
			}
		}
		for k, v := range w.equal {
			if labels[k] != v {
				ok = false
			}
		}
		for k, v := range w.differ {
			if labels[k] == v {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// TestOriginalDashboardSeries runs a real agent (memory and redis
// backends), drives the traffic each panel of the Python proxy-hopper's
// two Grafana dashboards shows (successes, a dead IP retried and
// quarantined, an exhausted request, a request no IP could take, an
// unmatched one, background probes) and checks that /metrics exposes
// every series those dashboards query, with their labels.
func TestOriginalDashboardSeries(t *testing.T) {
	wants := readSeriesWants(t, filepath.Join("testdata", "original-dashboard-series.txt"))
	// What the traffic below must show, read as proxy-hopper counts it:
	// web's failed attempt (the dead IP, retried) is a request that did
	// not succeed, so the error-rate panels are not flat at 0.
	wants = append(wants, seriesWant{line: "proxy_hopper_requests_total target=web outcome!=success (web's failed attempt)",
		name: "proxy_hopper_requests_total", has: []string{"target", "outcome"},
		equal: map[string]string{"target": "web"}, differ: map[string]string{"outcome": "success"}})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello")
	}))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	dead := net.JoinHostPort("127.0.0.3", fmt.Sprint(testenv.FreePort(t, "127.0.0.3")))  // refuses
	dead2 := net.JoinHostPort("127.0.0.4", fmt.Sprint(testenv.FreePort(t, "127.0.0.4"))) // refuses
	for _, backend := range []string{"memory", "redis"} {
		t.Run(backend, func(t *testing.T) {
			backendCfg := ""
			if backend == "redis" {
				srv := testenv.StartRedis(t, testenv.RedisOptions{})
				backendCfg = fmt.Sprintf("  backend: redis\n  redisUrl: %q\n  redisKeyPrefix: \"dash-%d:\"\n", srv.URL(0), time.Now().UnixNano())
			}
			cfgPath, metricsPort := writeMetricsConfig(t, fmt.Sprintf(`
  shutdownTimeout: 2s
  probeInterval: 200ms
  probeTimeout: 2s
  probeUrls: ["%s/probe"]
  probeFailuresUntilQuarantine: 0
%sproxyProviders:
  - name: local
    ipList: ["%s", "%s"]
    regionTag: lab
  - name: gone
    ipList: ["%s"]
ipPools:
  - name: both
    ipRequests: [{provider: local, count: 2}]
  - name: deadonly
    ipRequests: [{provider: gone, count: 1}]
targets:
  - name: solo
    regex: '127\.0\.0\.5'
    ipPool: deadonly
    minRequestInterval: 0
    maxQueueWait: 300ms
    numRetries: 0
    ipFailuresUntilQuarantine: 1
    quarantineTime: 1h
  - name: web
    regex: '127\.0\.0\.1'
    ipPool: both
    minRequestInterval: 0
    maxQueueWait: 5s
    numRetries: 2
    ipFailuresUntilQuarantine: 1
    quarantineTime: 1h
`, origin.URL, backendCfg, tp.Addr, dead, dead2))
			_, ln, metricsAddr, _ := runMetricsAgent(t, cfgPath, metricsPort)

			client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			get := func(target string) int {
				t.Helper()
				req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
				req.Header.Set(proxy.HeaderTarget, target)
				req.Header.Set(proxy.HeaderTag, "dash")
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			// Two IPs in rotation: one of the requests meets the dead one,
			// which is quarantined at once, and is retried on tinyproxy.
			for range 3 {
				if code := get(origin.URL); code != 200 {
					t.Fatalf("request through tinyproxy: %d", code)
				}
			}
			// The solo target's only IP is dead and it has no retries: the
			// first request exhausts them (502), the next finds no IP (503).
			// Its origin is never dialled.
			if code := get("http://127.0.0.5:9"); code != 502 {
				t.Fatalf("request through the dead IP: %d, want 502", code)
			}
			if code := get("http://127.0.0.5:9"); code != 503 {
				t.Fatalf("request with its IP quarantined: %d, want 503", code)
			}
			if code := get("http://127.0.0.9:9"); code != 502 { // matches no target; never dialled
				t.Fatalf("unmatched request: %d, want 502", code)
			}

			// Request hooks run just after the client has its answer, and
			// probes every 200ms: scrape until everything shows.
			var missing []string
			var body string
			for deadline := time.Now().Add(10 * time.Second); ; {
				fams, text := scrapeFamilies(t, client, "http://"+metricsAddr+"/metrics")
				body = text
				missing = missing[:0]
				for _, w := range wants {
					if !w.found(fams) {
						missing = append(missing, w.line)
					}
				}
				if len(missing) == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			for _, m := range missing {
				t.Errorf("/metrics has no series for the dashboards' %s", m)
			}
			if t.Failed() {
				t.Logf("/metrics:\n%s", grepLines(body, "proxy_hopper_"))
			}
		})
	}
}

func scrapeFamilies(t *testing.T, client *http.Client, url string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams, string(b)
}
