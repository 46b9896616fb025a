package admin_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/admin"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestRecorderEventsRing(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := admin.NewRecorder(clk.now, 3)
	if got := r.Events(); len(got) != 0 {
		t.Fatalf("fresh recorder: %v", got)
	}
	for i := range 5 {
		clk.add(time.Second)
		if i%2 == 0 {
			r.Quarantined("t", fmt.Sprintf("10.0.0.%d:80", i), clk.now().Add(time.Minute), "admin")
		} else {
			r.Released("t", fmt.Sprintf("u:p@10.0.0.%d:80", i))
		}
	}
	var got []string
	for _, e := range r.Events() {
		got = append(got, e.Kind+" "+e.Address)
	}
	want := []string{"quarantined 10.0.0.4:80", "released 10.0.0.3:80", "quarantined 10.0.0.2:80"}
	if !slices.Equal(got, want) {
		t.Errorf("events = %v, want newest first %v (credentials stripped)", got, want)
	}
	if e := r.Events()[0]; !e.Until.Equal(e.Time.Add(time.Minute)) {
		t.Errorf("until = %v", e.Until)
	}
}

func TestRecorderTraffic(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := admin.NewRecorder(clk.now, 0)
	for range 30 {
		r.Request(proxy.RequestEvent{Outcome: "success"})
	}
	clk.add(10 * time.Second)
	for range 6 {
		r.Request(proxy.RequestEvent{Outcome: "rate_limited"})
	}
	r.Attempt(proxy.AttemptEvent{Target: "t", Addr: "a:1", OK: true})
	r.Attempt(proxy.AttemptEvent{Target: "t", Addr: "a:1", OK: false})
	tr := r.Traffic()
	if tr.Requests != 36 || tr.Rate != 36.0/60 || tr.Recent["success"] != 30 || tr.Recent["rate_limited"] != 6 || tr.Total["success"] != 30 {
		t.Errorf("traffic: %+v", tr)
	}
	if len(tr.Series) != 60 || tr.Series[59] != 6 || tr.Series[49] != 30 {
		t.Errorf("series: %v", tr.Series)
	}
	if c := r.IP("t", "a:1"); c.Requests != 2 || c.Failed != 1 || !c.LastUsed.Equal(clk.now()) {
		t.Errorf("IP counts: %+v", c)
	}
	if c := r.IP("t", "b:1"); c.Requests != 0 {
		t.Errorf("unknown IP counts: %+v", c)
	}
	// A minute later the window holds only what came since; totals stay.
	clk.add(55 * time.Second)
	r.Request(proxy.RequestEvent{Outcome: "no_match"})
	tr = r.Traffic()
	if tr.Recent["success"] != 0 || tr.Recent["rate_limited"] != 6 || tr.Recent["no_match"] != 1 || tr.Total["success"] != 30 || tr.Requests != 37 {
		t.Errorf("traffic after 65s: %+v", tr)
	}
	clk.add(2 * time.Minute)
	if tr = r.Traffic(); tr.Rate != 0 || len(tr.Recent) != 0 {
		t.Errorf("traffic after 3 idle minutes: %+v", tr)
	}
}

func TestRecorderConcurrent(t *testing.T) {
	r := admin.NewRecorder(nil, 10)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				r.Attempt(proxy.AttemptEvent{Target: "t", Addr: "a:1", OK: j%2 == 0})
				r.Request(proxy.RequestEvent{Outcome: "success"})
				r.Quarantined("t", fmt.Sprint(i), time.Now(), "status_429")
				_ = r.Traffic()
				_ = r.Events()
			}
		})
	}
	wg.Wait()
	if c := r.IP("t", "a:1"); c.Requests != 1600 || c.Failed != 800 {
		t.Errorf("counts: %+v", c)
	}
	if n := len(r.Events()); n != 10 {
		t.Errorf("%d events kept, want 10", n)
	}
}

func TestParseAddr(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{"127.0.0.1:3128", "127.0.0.1:3128", ""},
		{"proxy-1.example.com:8080", "proxy-1.example.com:8080", ""},
		{"[2001:db8::1]:3128", "[2001:db8::1]:3128", ""},
		{"[2001:0db8:0000::0001]:3128", "[2001:db8::1]:3128", ""},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1:80", ""},
		{"10.0.0.1:080", "10.0.0.1:80", ""},
		{"", "", "empty address"},
		{"10.0.0.1", "", "is not host:port"},
		{"10.0.0.1:0", "", "port must be"},
		{"10.0.0.1:65536", "", "port must be"},
		{"10.0.0.1:http", "", "port must be"},
		{":80", "", "neither an IP address nor a host name"},
		{"a b:80", "", "neither an IP address nor a host name"},
		{"user:pass@10.0.0.1:80", "", "must not carry credentials"},
		{"http://10.0.0.1:80", "", "is a URL"},
		{"[fe80::1%eth0]:80", "", "zones are not supported"},
	} {
		got, err := admin.ParseAddr(c.in)
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("ParseAddr(%q) = %q, %v; want %q", c.in, got, err, c.want)
			}
		} else if err == nil || !contains(err.Error(), c.err) {
			t.Errorf("ParseAddr(%q) = %q, %v; want error %q", c.in, got, err, c.err)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestRecorderTargetTraffic: per target, the requests of the last 60 s,
// their rate, and the median and p95 of the latest 1,024 of them; older
// requests drop out; reasons are kept per IP and cut.
func TestRecorderTargetTraffic(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := admin.NewRecorder(clk.now, 0)
	for i := 1; i <= 100; i++ { // 1..100 ms
		r.Request(proxy.RequestEvent{Target: "a", Outcome: "success", Duration: time.Duration(i) * time.Millisecond})
	}
	r.Request(proxy.RequestEvent{Target: "b", Outcome: "success", Duration: time.Second})
	r.Request(proxy.RequestEvent{Outcome: "no_match", Duration: time.Second}) // no target: not counted
	got := r.Target("a")
	if got.Requests != 100 || got.P50Ms != 50 || got.P95Ms != 95 || got.Rate != 100.0/60 {
		t.Errorf("target a: %+v, want 100 requests, p50 50 ms, p95 95 ms", got)
	}
	if got := r.Target("b"); got.Requests != 1 || got.P50Ms != 1000 || got.P95Ms != 1000 {
		t.Errorf("target b: %+v", got)
	}
	clk.add(30 * time.Second)
	for range 2000 { // more than the samples kept: the latest count
		r.Request(proxy.RequestEvent{Target: "a", Outcome: "success", Duration: 7 * time.Millisecond})
	}
	if got := r.Target("a"); got.Requests != 2100 || got.P50Ms != 7 || got.P95Ms != 7 {
		t.Errorf("target a after 2,000 more: %+v", got)
	}
	clk.add(31 * time.Second)
	if got := r.Target("a"); got.Requests != 2000 {
		t.Errorf("target a 61 s after the first 100: %+v, want them gone", got)
	}
	clk.add(time.Minute)
	if got := r.Target("a"); got != (admin.TargetTraffic{}) {
		t.Errorf("target a after a quiet minute: %+v", got)
	}

	r.Quarantined("a", "u:p@10.0.0.1:80", clk.now().Add(time.Minute), strings.Repeat("status_429", 20))
	c := r.IP("a", "u:p@10.0.0.1:80")
	if len(c.QuarantineReason) != 64 || !c.QuarantinedAt.Equal(clk.now()) {
		t.Errorf("IP counts after a quarantine: %+v", c)
	}
	if e := r.Events()[0]; e.Reason != c.QuarantineReason || e.Address != "10.0.0.1:80" || e.ReasonText == "" {
		t.Errorf("event: %+v", e)
	}
}
