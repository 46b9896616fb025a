package metrics

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// exposition is what /metrics would serve from reg.
func exposition(t *testing.T, reg *prometheus.Registry) []byte {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// tagsOf returns the distinct tag label values of metric name for target.
func tagsOf(t *testing.T, reg *prometheus.Registry, name, target string) map[string]bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var tgt, tag string
			for _, lp := range mt.GetLabel() {
				switch lp.GetName() {
				case "target":
					tgt = lp.GetValue()
				case "tag":
					tag = lp.GetValue()
				}
			}
			if tgt == target {
				out[tag] = true
			}
		}
	}
	return out
}

// TestTagCardinalityBounded floods the request and attempt hooks with
// thousands of distinct tags, admitted, refused and unmatched: each target
// (and "unmatched") keeps at most TagLimit tags plus "other" (and the
// empty tag), refused requests keep none, and the exposition stops
// growing.
func TestTagCardinalityBounded(t *testing.T) {
	const limit, flood = 20, 3000
	reg := prometheus.NewRegistry()
	m, err := NewWithOptions(reg, Options{TagLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	round := func(r int) {
		for i := range flood {
			tag := fmt.Sprintf("r%d-tag-%d", r, i)
			for _, target := range []string{"api", "web"} {
				m.Attempt(proxy.AttemptEvent{Target: target, Addr: "10.0.0.1:3128", Mode: "header", Tag: tag, Reason: "status_503", Status: 503})
				m.Attempt(proxy.AttemptEvent{Target: target, Addr: "10.0.0.2:3128", Mode: "header", Tag: tag, OK: true, Status: 200})
				m.Request(proxy.RequestEvent{Target: target, Mode: "header", Tag: tag, Outcome: proxy.OutcomeSuccess, Status: 200})
				m.Request(proxy.RequestEvent{Target: target, Mode: "header", Tag: tag, Outcome: proxy.OutcomeServerError, Status: 500})
				// Refused: an ACL said no, after the target matched.
				m.Request(proxy.RequestEvent{Target: target, Mode: "proxy", Tag: tag, Outcome: proxy.OutcomeForbidden, AuthReason: "forbidden", Status: 403})
			}
			// Refused before any target: no credentials, nothing matched.
			m.Request(proxy.RequestEvent{Mode: "header", Tag: tag, Outcome: proxy.OutcomeAuthFailed, AuthReason: "missing", Status: 401})
			m.Request(proxy.RequestEvent{Mode: "header", Tag: tag, Outcome: proxy.OutcomeNoMatch, Status: 502})
		}
		for _, target := range []string{"api", "web"} { // untagged
			m.Attempt(proxy.AttemptEvent{Target: target, Addr: "10.0.0.1:3128", Mode: "header", OK: true, Status: 200})
			m.Request(proxy.RequestEvent{Target: target, Mode: "header", Outcome: proxy.OutcomeSuccess, Status: 200})
		}
	}
	round(0)
	size := len(exposition(t, reg))
	round(1)
	if grown := len(exposition(t, reg)) - size; grown > 256 {
		t.Errorf("/metrics grew by %d bytes in a second round of %d new tags", grown, flood)
	}
	for _, target := range []string{"api", "web"} {
		for _, name := range []string{"proxy_hopper_client_requests_total", "proxy_hopper_responses_total", "proxy_hopper_requests_total"} {
			tags := tagsOf(t, reg, name, target)
			if len(tags) > limit+2 || !tags[OtherTag] || !tags[""] {
				t.Errorf("%s{target=%q}: %d tag values (want at most %d, with %q and \"\")", name, target, len(tags), limit+2, OtherTag)
			}
			for i := range limit {
				if tag := fmt.Sprintf("r0-tag-%d", i); !tags[tag] {
					t.Errorf("%s{target=%q}: first tag %q missing", name, target, tag)
				}
			}
		}
	}
	for _, name := range []string{"proxy_hopper_client_requests_total", "proxy_hopper_requests_total"} {
		// Tagged as proxy-hopper tags them, bounded like a target's.
		if tags := tagsOf(t, reg, name, UnmatchedTarget); len(tags) != limit+1 || !tags[OtherTag] || !tags["r0-tag-0"] {
			t.Errorf("%s{target=unmatched}: tags %v, want the first %d and %q", name, tags, limit, OtherTag)
		}
	}
	if tags := tagsOf(t, reg, "proxy_hopper_client_requests_total", ""); len(tags) != 1 || !tags[""] {
		t.Errorf("requests refused before a target carry tags %v, want only the empty one", tags)
	}
	// Every request is still counted.
	if got := testutil.ToFloat64(m.clientReqs.WithLabelValues("api", proxy.OutcomeSuccess, OtherTag)); got != 2*flood-limit {
		t.Errorf("api success other = %v, want %d", got, 2*flood-limit)
	}
	if got := testutil.ToFloat64(m.clientReqs.WithLabelValues("api", proxy.OutcomeForbidden, "")); got != 2*flood {
		t.Errorf("api forbidden = %v, want %d", got, 2*flood)
	}
	if got := testutil.ToFloat64(m.authFailures.WithLabelValues("missing")); got != 2*flood {
		t.Errorf("auth failures = %v, want %d", got, 2*flood)
	}
}

// TestTagLimitZero counts every tag as "other".
func TestTagLimitZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewWithOptions(reg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.Request(proxy.RequestEvent{Target: "api", Tag: "search", Outcome: proxy.OutcomeSuccess, Status: 200})
	m.Request(proxy.RequestEvent{Target: "api", Outcome: proxy.OutcomeSuccess, Status: 200})
	if tags := tagsOf(t, reg, "proxy_hopper_client_requests_total", "api"); len(tags) != 2 || !tags[OtherTag] || !tags[""] {
		t.Errorf("tags = %v", tags)
	}
}

// TestTagTruncated: the tag label is the header's first 64 characters, as
// proxy-hopper cuts it.
func TestTagTruncated(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 100)
	m.Request(proxy.RequestEvent{Target: "api", Tag: long, Outcome: proxy.OutcomeSuccess, Status: 200})
	tags := tagsOf(t, reg, "proxy_hopper_client_requests_total", "api")
	if want := strings.Repeat("é", 64); len(tags) != 1 || !tags[want] {
		t.Errorf("tags = %v, want only %q", tags, want)
	}
}

// TestStatusCardinalityBounded: an origin answering every code from 100 to
// 599 leaves the codes net/http knows, OddStatusLimit others, and classes.
func TestStatusCardinalityBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		for code := 100; code < 600; code++ {
			m.Request(proxy.RequestEvent{Target: "api", Outcome: proxy.OutcomeSuccess, Status: code})
		}
	}
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "proxy_hopper_responses_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "status_code" {
					got[lp.GetValue()] = mt.GetCounter().GetValue()
				}
			}
		}
	}
	known := 0
	for code := 100; code < 600; code++ {
		if http.StatusText(code) != "" {
			known++
		}
	}
	if len(got) > known+OddStatusLimit+5 {
		t.Errorf("%d status_code values, want at most %d", len(got), known+OddStatusLimit+5)
	}
	for _, code := range []string{"200", "404", "429", "503", "102", "103"} {
		if got[code] != 3 {
			t.Errorf("status_code %s counted %v, want 3", code, got[code])
		}
	}
	if got["5xx"] == 0 {
		t.Errorf("no 5xx class: %v", got)
	}
	var total float64
	for _, v := range got {
		total += v
	}
	if total != 3*500 {
		t.Errorf("%v responses counted, want %d", total, 3*500)
	}
}
