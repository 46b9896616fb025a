package identity

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fixture is a store on a seeded source and a fake clock, recording its
// rotations.
type fixture struct {
	*Store
	clock *fakeClock

	mu        sync.Mutex
	rotations []string
}

func newFixture(t *testing.T, cfg Config, seed uint64) *fixture {
	t.Helper()
	f := &fixture{clock: &fakeClock{now: t0}}
	s, err := NewStore(cfg, Options{
		Rand:  rand.NewPCG(seed, seed^0x9e3779b97f4a7c15),
		Clock: f.clock,
		OnRotate: func(addr, reason string) {
			f.mu.Lock()
			f.rotations = append(f.rotations, addr+" "+reason)
			f.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	f.Store = s
	return f
}

func (f *fixture) events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.rotations)
}

func enabled() Config {
	c := DefaultConfig()
	c.Enabled = true
	return c
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func setCookie(vs ...string) http.Header {
	h := http.Header{}
	for _, v := range vs {
		h.Add("Set-Cookie", v)
	}
	return h
}

func cookieNames(cs []*http.Cookie) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name+"="+c.Value)
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"pinned", func(c *Config) { c.Profile = "safari-macos" }, ""},
		{"warmup with query", func(c *Config) { c.Warmup = Warmup{true, "/start?x=1"} }, ""},
		{"warmup empty path", func(c *Config) { c.Warmup = Warmup{true, ""} }, ""},
		{"negative rotate", func(c *Config) { c.RotateAfterRequests = -1 }, "identity.rotateAfterRequests"},
		{"unknown profile", func(c *Config) { c.Profile = "lynx" }, `identity.profile: unknown profile "lynx" (known: chrome-macos,`},
		{"relative warmup", func(c *Config) { c.Warmup.Path = "start" }, "identity.warmup.path"},
		{"absolute URL warmup", func(c *Config) { c.Warmup.Path = "http://evil.example/" }, "identity.warmup.path"},
		{"network-path warmup", func(c *Config) { c.Warmup.Path = "//evil.example/" }, "identity.warmup.path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := enabled()
			tt.mutate(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want %q", err, tt.wantErr)
			}
			if _, serr := NewStore(c, Options{}); serr == nil {
				t.Errorf("NewStore accepted an invalid config")
			}
		})
	}
	c := enabled()
	c.Profile = "lynx"
	if err := c.Validate(); !errors.Is(err, ErrUnknownProfile) {
		t.Errorf("unknown profile error %v is not ErrUnknownProfile", err)
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	want := Config{Enabled: false, Cookies: true, RotateOn429: true, Warmup: Warmup{Enabled: false, Path: "/"}}
	if c != want {
		t.Errorf("DefaultConfig() = %+v, want %+v", c, want)
	}
}

func TestGetCreatesOnce(t *testing.T) {
	f := newFixture(t, enabled(), 1)
	a := f.Get("10.0.0.1")
	f.clock.Advance(time.Minute)
	if b := f.Get("10.0.0.1"); b != a {
		t.Fatalf("second Get returned a different identity")
	}
	if a.Addr() != "10.0.0.1" || !a.Created().Equal(t0) || a.ID() == "" || a.Requests() != 0 {
		t.Errorf("identity %s addr %s created %v requests %d", a.ID(), a.Addr(), a.Created(), a.Requests())
	}
	b := f.Get("10.0.0.2")
	if b == a || b.ID() == a.ID() || !b.Created().Equal(t0.Add(time.Minute)) {
		t.Errorf("second IP: same identity, same ID or clock unused (created %v)", b.Created())
	}
	if f.Len() != 2 {
		t.Errorf("Len = %d, want 2", f.Len())
	}
	f.Forget("10.0.0.1")
	if f.Len() != 1 || f.Get("10.0.0.1") == a {
		t.Errorf("Forget kept the identity")
	}
	if len(f.events()) != 0 {
		t.Errorf("creation fired OnRotate: %v", f.events())
	}
}

// TestDeterministic: the same seed gives the same identities.
func TestDeterministic(t *testing.T) {
	run := func() []string {
		f := newFixture(t, enabled(), 42)
		var out []string
		for i := range 8 {
			id := f.Get(fmt.Sprintf("10.0.0.%d", i))
			out = append(out, id.ID()+" "+id.Profile().Name())
		}
		return out
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Errorf("same seed, different identities:\n%v\n%v", a, b)
	}
	profiles := map[string]bool{}
	for _, s := range a {
		profiles[strings.Fields(s)[1]] = true
	}
	if len(profiles) < 2 {
		t.Errorf("8 random identities all had one profile: %v", a)
	}
	// The default source works too.
	s, err := NewStore(enabled(), Options{})
	if err != nil || s.Get("x").ID() == "" {
		t.Errorf("NewStore with default options: %v", err)
	}
}

// TestRotationTriggers: each trigger replaces the identity with one that
// has a new profile, an empty jar, no requests and a pending warm-up, and
// reports the rotation.
func TestRotationTriggers(t *testing.T) {
	const addr = "10.0.0.1"
	u := mustURL(t, "https://shop.example.com/")
	tests := []struct {
		name     string
		cfg      func(*Config)
		trigger  func(t *testing.T, f *fixture) // rotates on its last step
		reason   string
		requests int // responses counted before the trigger's last step
	}{
		{
			name:    "quarantine release",
			trigger: func(t *testing.T, f *fixture) { f.Rotate(addr, ReasonQuarantine) },
			reason:  ReasonQuarantine,
		},
		{
			name: "429",
			trigger: func(t *testing.T, f *fixture) {
				f.OnResponse(addr, 200)
				if !f.OnResponse(addr, 429) {
					t.Fatal("429 did not rotate")
				}
			},
			reason:   Reason429,
			requests: 1,
		},
		{
			name: "request count",
			cfg:  func(c *Config) { c.RotateAfterRequests = 3 },
			trigger: func(t *testing.T, f *fixture) {
				for i := 1; i <= 2; i++ {
					if f.OnResponse(addr, 200) {
						t.Fatalf("rotated after %d of 3 requests", i)
					}
				}
				if !f.OnResponse(addr, 200) {
					t.Fatal("3rd request did not rotate")
				}
			},
			reason:   ReasonRequests,
			requests: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Many seeds: a random new profile must never repeat the old one.
			for seed := range uint64(50) {
				cfg := enabled()
				cfg.Warmup.Enabled = true
				if tt.cfg != nil {
					tt.cfg(&cfg)
				}
				f := newFixture(t, cfg, seed)
				old := f.Get(addr)
				old.Learn(u, setCookie("sid=old; Path=/"))
				old.MarkWarmedUp()
				other := f.Get("10.0.0.2")
				other.Learn(u, setCookie("sid=other"))

				tt.trigger(t, f)

				nu := f.Get(addr)
				switch {
				case nu == old || nu.ID() == old.ID():
					t.Fatalf("seed %d: identity not replaced", seed)
				case nu.Profile().Name() == old.Profile().Name():
					t.Fatalf("seed %d: new identity kept profile %s", seed, old.Profile())
				case len(nu.Cookies(u)) != 0:
					t.Fatalf("seed %d: new jar has %v", seed, cookieNames(nu.Cookies(u)))
				case nu.Requests() != 0:
					t.Fatalf("seed %d: new identity has %d requests", seed, nu.Requests())
				}
				if _, ok := nu.WarmupPath(); !ok {
					t.Fatalf("seed %d: new identity needs no warm-up", seed)
				}
				if old.Requests() != tt.requests+boolInt(tt.reason != ReasonQuarantine) {
					t.Fatalf("seed %d: old identity counted %d", seed, old.Requests())
				}
				if got := cookieNames(f.Get("10.0.0.2").Cookies(u)); !slices.Equal(got, []string{"sid=other"}) {
					t.Fatalf("seed %d: other IP's jar changed to %v", seed, got)
				}
				if got, want := f.events(), []string{addr + " " + tt.reason}; !slices.Equal(got, want) {
					t.Fatalf("seed %d: rotations %v, want %v", seed, got, want)
				}
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestNoRotation(t *testing.T) {
	const addr = "10.0.0.1"
	tests := []struct {
		name   string
		cfg    func(*Config)
		status []int
	}{
		{"429 without rotateOn429", func(c *Config) { c.RotateOn429 = false }, []int{429, 429, 429}},
		{"count of 0 never rotates", func(c *Config) { c.RotateAfterRequests = 0 }, slices.Repeat([]int{200}, 100)},
		{"below the count", func(c *Config) { c.RotateAfterRequests = 5 }, []int{200, 500, 503, 200}},
		{"disabled", func(c *Config) { c.Enabled = false; c.RotateAfterRequests = 1 }, []int{429, 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := enabled()
			tt.cfg(&cfg)
			f := newFixture(t, cfg, 7)
			id := f.Get(addr)
			for _, st := range tt.status {
				if f.OnResponse(addr, st) {
					t.Fatalf("status %d rotated", st)
				}
			}
			if f.Get(addr) != id || id.Requests() != len(tt.status) || len(f.events()) != 0 {
				t.Errorf("identity replaced, or %d requests counted of %d, or rotations %v", id.Requests(), len(tt.status), f.events())
			}
		})
	}
}

func TestUnknownAddr(t *testing.T) {
	f := newFixture(t, enabled(), 1)
	f.Rotate("10.0.0.9", ReasonQuarantine)
	if f.OnResponse("10.0.0.9", 429) {
		t.Errorf("OnResponse rotated an IP without identity")
	}
	if f.Len() != 0 || len(f.events()) != 0 {
		t.Errorf("Len %d, rotations %v; want none", f.Len(), f.events())
	}
}

func TestPinnedProfile(t *testing.T) {
	cfg := enabled()
	cfg.Profile = "firefox-linux"
	cfg.RotateAfterRequests = 1
	f := newFixture(t, cfg, 3)
	for i := range 5 {
		addr := fmt.Sprintf("10.0.0.%d", i)
		old := f.Get(addr)
		f.OnResponse(addr, 200)
		f.Rotate(addr, ReasonQuarantine)
		for _, id := range []*Identity{old, f.Get(addr)} {
			if id.Profile().Name() != "firefox-linux" {
				t.Fatalf("%s: profile %s, want the pinned firefox-linux", addr, id.Profile())
			}
		}
		if f.Get(addr) == old {
			t.Fatalf("%s: not rotated", addr)
		}
	}
	// A new pin applies to identities created after Update.
	cfg.Profile = "safari-macos"
	if err := f.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if p := f.Get("10.0.0.0").Profile().Name(); p != "firefox-linux" {
		t.Errorf("existing identity changed profile to %s", p)
	}
	f.Rotate("10.0.0.0", ReasonQuarantine)
	if p := f.Get("10.0.0.0").Profile().Name(); p != "safari-macos" {
		t.Errorf("rotated identity has %s, want the new pin safari-macos", p)
	}
	cfg.Profile = "lynx"
	if err := f.Update(cfg); err == nil || f.Config().Profile != "safari-macos" {
		t.Errorf("Update accepted an unknown profile (err %v)", err)
	}
}

func TestWarmup(t *testing.T) {
	u := mustURL(t, "https://shop.example.com:8443/basket?item=1")
	tests := []struct {
		name    string
		cfg     func(*Config)
		want    string // "" = no warm-up
		wantURL string
	}{
		{"enabled", func(c *Config) { c.Warmup = Warmup{true, "/start?from=ph"} }, "/start?from=ph", "https://shop.example.com:8443/start?from=ph"},
		{"empty path is root", func(c *Config) { c.Warmup = Warmup{true, ""} }, "/", "https://shop.example.com:8443/"},
		{"warm-up off", func(c *Config) { c.Warmup = Warmup{false, "/start"} }, "", ""},
		{"identity off", func(c *Config) { c.Enabled = false; c.Warmup = Warmup{true, "/"} }, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := enabled()
			tt.cfg(&cfg)
			f := newFixture(t, cfg, 1)
			id := f.Get("10.0.0.1")
			p, ok := id.WarmupPath()
			wu, uok := id.WarmupURL(u)
			if tt.want == "" {
				if ok || uok {
					t.Fatalf("warm-up %q %v asked for", p, wu)
				}
				return
			}
			if !ok || p != tt.want || !uok || wu.String() != tt.wantURL {
				t.Fatalf("WarmupPath = %q, %v; WarmupURL = %v, %v; want %q, %s", p, ok, wu, uok, tt.want, tt.wantURL)
			}
			// Still pending until marked (a transport error leaves it so).
			if _, ok := f.Get("10.0.0.1").WarmupPath(); !ok {
				t.Fatalf("warm-up no longer pending before MarkWarmedUp")
			}
			id.MarkWarmedUp()
			if _, ok := id.WarmupPath(); ok {
				t.Fatalf("warm-up asked for twice")
			}
			if _, ok := id.WarmupURL(u); ok {
				t.Fatalf("warm-up URL asked for twice")
			}
			f.Rotate("10.0.0.1", Reason429)
			if _, ok := f.Get("10.0.0.1").WarmupPath(); !ok {
				t.Fatalf("fresh identity after rotation needs no warm-up")
			}
			if _, ok := f.Get("10.0.0.2").WarmupPath(); !ok {
				t.Fatalf("other IP's fresh identity needs no warm-up")
			}
		})
	}
}

// TestConcurrent runs every operation from many goroutines (go test -race)
// and checks that no cookie crosses IPs.
func TestConcurrent(t *testing.T) {
	cfg := enabled()
	cfg.RotateAfterRequests = 7
	cfg.Warmup.Enabled = true
	f := newFixture(t, cfg, 9)
	u := mustURL(t, "https://shop.example.com/")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			addr := fmt.Sprintf("10.0.0.%d", g%4)
			for i := range 200 {
				id := f.Get(addr)
				if _, ok := id.WarmupPath(); ok {
					id.MarkWarmedUp()
				}
				out := id.Apply([]Header{{"Cookie", "client=1"}, {"User-Agent", "curl/8"}}, u)
				c, _ := lookup(out, "Cookie")
				for _, p := range strings.Split(c, "; ") {
					if v, ok := strings.CutPrefix(p, "ip="); ok && v != addr {
						errs <- fmt.Errorf("%s sent cookie ip=%s", addr, v)
						return
					}
				}
				id.Learn(u, setCookie("ip="+addr, fmt.Sprintf("n%d=%d", g, i)))
				_ = id.Requests()
				_ = id.Cookies(u)
				status := 200
				if i%50 == 49 {
					status = 429
				}
				f.OnResponse(addr, status)
				switch i % 60 {
				case 30:
					f.Rotate(addr, ReasonQuarantine)
				case 59:
					_ = f.Update(cfg)
				}
				_ = f.Len()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if f.Len() != 4 {
		t.Errorf("Len = %d, want 4", f.Len())
	}
}
