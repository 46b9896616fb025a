package auth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// cheapHash is a bcrypt hash at the lowest cost, to keep tests fast; the
// minor version is proxy-hopper's (Python bcrypt writes $2b$).
func cheapHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Replace(string(h), "$2a$", "$2b$", 1)
}

// payloadOf decodes a compact JWT's header and payload.
func payloadOf(t *testing.T, tok string) (hdr, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	for i, dst := range []*map[string]any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil || json.Unmarshal(b, dst) != nil {
			t.Fatalf("segment %d: %v", i, err)
		}
	}
	return hdr, claims
}

// TestLogin: the admin user logs in with the right password and gets
// proxy-hopper's JWT (HS256; sub, role, iat, exp = iat + jwtExpiryMinutes),
// which this agent accepts; anything else is refused the same way.
func TestLogin(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	a, err := New(Config{Enabled: true, JWTSecret: "s", Now: clock, JWTExpiry: 90 * time.Minute,
		Admins: []AdminUser{{Username: "admin", PasswordHash: cheapHash(t, "hunter2")}, {Username: "ops", PasswordHash: cheapHash(t, "pw2"), Role: "operator"}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := a.Login("admin", "hunter2")
	if err != nil {
		t.Fatal(err)
	}
	hdr, c := payloadOf(t, tok)
	if hdr["alg"] != "HS256" || hdr["typ"] != "JWT" {
		t.Errorf("header %v", hdr)
	}
	want := map[string]any{"sub": "admin", "role": "admin", "iat": float64(now.Unix()), "exp": float64(now.Unix() + 90*60)}
	if len(c) != len(want) {
		t.Errorf("claims %v, want %v", c, want)
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("claim %s = %v, want %v", k, c[k], v)
		}
	}
	p, err := a.Authenticate(tok)
	if err != nil || p.Kind != "jwt" || p.Name != "admin" || !p.Can("admin") {
		t.Fatalf("issued token: %+v %v", p, err)
	}
	if tok, err := a.Login("ops", "pw2"); err != nil {
		t.Error(err)
	} else if p, err := a.Authenticate(tok); err != nil || p.Role != "operator" || p.Can("admin") || !p.Can("write") {
		t.Errorf("operator token: %+v %v", p, err)
	}
	for _, c := range []struct{ user, pw string }{{"admin", "wrong"}, {"nobody", "hunter2"}, {"ADMIN", "hunter2"}, {"admin", ""}, {"ops", "hunter2"}} {
		if _, err := a.Login(c.user, c.pw); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%s/%s: %v, want ErrBadCredentials", c.user, c.pw, err)
		}
	}
	// An unknown user name costs one bcrypt comparison, like a known one.
	var compared [][]byte
	a.compare = func(h, pw []byte) error { compared = append(compared, h); return bcrypt.CompareHashAndPassword(h, pw) }
	_, _ = a.Login("nobody", "x")
	_, _ = a.Login("admin", "x")
	if len(compared) != 2 || len(compared[0]) == 0 {
		t.Errorf("bcrypt ran %d times for an unknown and a known user, want 2", len(compared))
	}
	off, _ := New(Config{Enabled: false, Admins: []AdminUser{{Username: "admin", PasswordHash: cheapHash(t, "x")}}})
	none, _ := New(Config{Enabled: true})
	for _, x := range []*Authenticator{off, none, nil} {
		if _, err := x.Login("admin", "x"); !errors.Is(err, ErrLoginNotConfigured) {
			t.Errorf("not configured: %v", err)
		}
	}
}

// TestLoginConfig: what New refuses or fills in for admin users.
func TestLoginConfig(t *testing.T) {
	h := cheapHash(t, "pw")
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"placeholder hash", Config{Admins: []AdminUser{{Username: "admin", PasswordHash: "$2b$12$REPLACE_ME_RUN_hash-password_COMMAND"}}}, "auth.admin (admin): passwordHash: not a bcrypt hash"},
		{"no user name", Config{Admins: []AdminUser{{PasswordHash: h}}}, "username is required"},
		{"expiry past the lifetime cap", Config{JWTExpiry: 25 * time.Hour, Admins: []AdminUser{{Username: "a", PasswordHash: h}}}, "auth.jwtExpiryMinutes (1500) is longer than auth.jwtMaxLifetime"},
	} {
		c.cfg.Enabled = true
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// No jwtSecret: a random one, as proxy-hopper; iss and aud set when
	// configured, so the token passes this agent's own checks.
	a, err := New(Config{Enabled: true, JWTIssuer: "https://ph.invalid/", JWTAudience: "ph", Admins: []AdminUser{{Username: "a", PasswordHash: h}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := a.Login("a", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, c := payloadOf(t, tok); c["iss"] != "https://ph.invalid/" || c["aud"] != "ph" {
		t.Errorf("claims %v", c)
	}
	if _, err := a.Authenticate(tok); err != nil {
		t.Errorf("own token refused: %v", err)
	}
	b, _ := New(Config{Enabled: true, Admins: []AdminUser{{Username: "a", PasswordHash: h}}})
	if _, err := b.Authenticate(tok); err == nil {
		t.Errorf("two random secrets accepted each other's tokens")
	}
	// HashPassword runs at HashCost (12, proxy-hopper's); the CLI test
	// checks a real one, this one the lowest cost (12 takes seconds under -race).
	if hp, err := hashPassword("pw", bcrypt.MinCost); err != nil || bcrypt.CompareHashAndPassword([]byte(hp), []byte("pw")) != nil || CheckPasswordHash(hp) != nil {
		t.Errorf("hashPassword: %q %v", hp, err)
	}
	if _, err := hashPassword(strings.Repeat("x", 73), bcrypt.MinCost); err == nil {
		t.Errorf("a password bcrypt would cut at 72 bytes was hashed")
	}
	if _, err := HashPassword(""); err == nil {
		t.Errorf("empty password hashed")
	}
}

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type loginResp struct {
	status int
	header http.Header
	body   map[string]any
}

func postLogin(t *testing.T, u string, contentType, body string) loginResp {
	t.Helper()
	resp, err := http.Post(u, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r := loginResp{status: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(b, &r.body); err != nil {
		t.Fatalf("answer is not JSON: %q", b)
	}
	return r
}

func form(user, pw string) string { return url.Values{"username": {user}, "password": {pw}}.Encode() }

const formType = "application/x-www-form-urlencoded"

// TestLoginHandler drives POST /auth/login over a real socket: the
// original's shapes and status codes, the body limit, the per-client
// failure limit, and no password or token in the log.
func TestLoginHandler(t *testing.T) {
	const pw = "correct horse battery staple"
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	a, err := New(Config{Enabled: true, JWTSecret: "s", Now: clock.Now, Admins: []AdminUser{{Username: "admin", PasswordHash: cheapHash(t, pw)}}})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var cur *Authenticator = a
	var mu sync.Mutex
	h := NewLoginHandler(func() *Authenticator { mu.Lock(); defer mu.Unlock(); return cur }, LoginOptions{Burst: 3, Every: time.Minute, Log: log, Now: clock.Now})
	srv := httptest.NewServer(h)
	defer srv.Close()
	u := srv.URL + "/auth/login"

	ok := postLogin(t, u, formType, form("admin", pw)+"&grant_type=password")
	tok, _ := ok.body["access_token"].(string)
	if ok.status != 200 || ok.body["token_type"] != "bearer" || tok == "" {
		t.Fatalf("login: %d %v", ok.status, ok.body)
	}
	if p, err := a.Authenticate(tok); err != nil || p.Name != "admin" {
		t.Fatalf("issued token: %v", err)
	}
	bad := postLogin(t, u, formType, form("admin", "wrong-password-1"))
	if bad.status != 401 || bad.body["detail"] != "Incorrect username or password" || bad.header.Get("WWW-Authenticate") != "Bearer" {
		t.Errorf("wrong password: %d %v %v", bad.status, bad.body, bad.header)
	}
	miss := postLogin(t, u, formType, "username=admin")
	if d, _ := miss.body["detail"].([]any); miss.status != 422 || len(d) != 1 || !strings.Contains(strings.Join(strings.Fields(jsonString(d)), ""), `"loc":["body","password"]`) {
		t.Errorf("missing password: %d %v", miss.status, miss.body)
	}
	if js := postLogin(t, u, "application/json", `{"username":"admin","password":"x"}`); js.status != 422 {
		t.Errorf("JSON body: %d %v (the original takes a form)", js.status, js.body)
	}
	if gt := postLogin(t, u, formType, form("admin", pw)+"&grant_type=client_credentials"); gt.status != 422 {
		t.Errorf("grant_type client_credentials: %d", gt.status)
	}
	if big := postLogin(t, u, formType, form("admin", strings.Repeat("p", 9<<10))); big.status != 413 {
		t.Errorf("9 KiB body: %d %v", big.status, big.body)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET: %d", resp.StatusCode)
	}

	// Burst 3: one failure above, two more, then the fourth is refused
	// unchecked — the right password too — until a minute has passed.
	for i := 0; i < 2; i++ {
		if r := postLogin(t, u, formType, form("nobody", "wrong-password-2")); r.status != 401 {
			t.Fatalf("failure %d: %d", i+2, r.status)
		}
	}
	lim := postLogin(t, u, formType, form("admin", pw))
	if lim.status != 429 || lim.header.Get("Retry-After") == "" {
		t.Errorf("past the failure limit: %d %v", lim.status, lim.header)
	}
	clock.Add(time.Minute)
	if r := postLogin(t, u, formType, form("admin", pw)); r.status != 200 {
		t.Errorf("a minute later: %d %v", r.status, r.body)
	}

	// The config reloads without admin users: 404, as proxy-hopper.
	none, _ := New(Config{Enabled: true})
	mu.Lock()
	cur = none
	mu.Unlock()
	if r := postLogin(t, u, formType, form("admin", pw)); r.status != 404 || r.body["detail"] != "Local authentication is not configured" {
		t.Errorf("no admin user: %d %v", r.status, r.body)
	}

	out := logs.String()
	for _, secret := range []string{pw, "wrong-password-1", "wrong-password-2", tok} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds a secret %.12q…:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, "admin login authentication failed") || !strings.Contains(out, `"msg":"admin login"`) {
		t.Errorf("log lacks the failures or the login:\n%s", out)
	}
}

func jsonString(v any) string { b, _ := json.Marshal(v); return string(b) }

// TestLoginHandlerBusy: password checks run at most Concurrency at once;
// a login that cannot get a turn within QueueWait gets 503, not a queue.
func TestLoginHandlerBusy(t *testing.T) {
	a, err := New(Config{Enabled: true, JWTSecret: "s", Admins: []AdminUser{{Username: "admin", PasswordHash: cheapHash(t, "pw")}}})
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	a.compare = func(h, pw []byte) error {
		entered <- struct{}{}
		<-release
		return bcrypt.CompareHashAndPassword(h, pw)
	}
	h := NewLoginHandler(func() *Authenticator { return a }, LoginOptions{Concurrency: 1, QueueWait: 50 * time.Millisecond, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv := httptest.NewServer(h)
	defer srv.Close()
	first := make(chan loginResp, 1)
	go func() { first <- postLogin(t, srv.URL, formType, form("admin", "pw")) }()
	<-entered
	if r := postLogin(t, srv.URL, formType, form("admin", "pw")); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("second login while the first is checked: %d %v", r.status, r.body)
	}
	close(release)
	if r := <-first; r.status != 200 {
		t.Errorf("first login: %d %v", r.status, r.body)
	}
}
