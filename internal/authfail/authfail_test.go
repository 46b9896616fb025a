package authfail

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(t *testing.T, burst, maxSources int) (*Limiter, *clock, *bytes.Buffer) {
	t.Helper()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	var buf bytes.Buffer
	l := New(Options{Burst: burst, Every: time.Minute, MaxSources: maxSources, What: "admin",
		Log: slog.New(slog.NewTextHandler(&buf, nil)), Now: c.now})
	return l, c, &buf
}

// guess is one attempt that fails; it reports whether it was checked.
func guess(l *Limiter, src netip.Addr) bool {
	if _, ok := l.Take(src); !ok {
		return false
	}
	l.Failed(src, "wrong token")
	return true
}

func TestBurstThenRefill(t *testing.T) {
	l, c, _ := newTest(t, 3, 100)
	a := netip.MustParseAddr("192.0.2.1")
	for i := range 3 {
		if !guess(l, a) {
			t.Fatalf("guess %d refused within the burst", i)
		}
	}
	wait, ok := l.Take(a)
	if ok || wait <= 0 || wait > time.Minute {
		t.Fatalf("4th guess: ok=%v wait=%s, want refused with a wait up to 1m", ok, wait)
	}
	// Another source is not affected; the same /64 in IPv6 is one source.
	if !guess(l, netip.MustParseAddr("192.0.2.2")) {
		t.Fatal("another IPv4 address was limited")
	}
	v6a, v6b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ffff")
	for range 3 {
		guess(l, v6a)
	}
	if _, ok := l.Take(v6b); ok {
		t.Fatal("another address of the same IPv6 /64 was not limited")
	}
	c.t = c.t.Add(time.Minute)
	if !guess(l, a) {
		t.Fatal("no attempt after the refill time")
	}
	if guess(l, a) {
		t.Fatal("two attempts after one refill period")
	}
}

func TestSuccessGivesTheAttemptBack(t *testing.T) {
	l, _, _ := newTest(t, 2, 100)
	a := netip.MustParseAddr("192.0.2.1")
	for range 100 {
		if _, ok := l.Take(a); !ok {
			t.Fatal("successful attempts used up the bucket")
		}
		l.Succeeded(a)
	}
	if n := l.Sources(); n != 0 {
		t.Fatalf("%d buckets kept for a source that only succeeded", n)
	}
}

func TestSourcesBounded(t *testing.T) {
	l, c, _ := newTest(t, 2, 64)
	checked := 0
	for i := range 10_000 {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if guess(l, src) {
			checked++
		}
		if n := l.Sources(); n > 64 {
			t.Fatalf("%d buckets, cap 64", n)
		}
	}
	// One guess from each of 64 sources, then the overflow bucket's 2.
	if checked != 64+2 {
		t.Fatalf("%d guesses checked from 10000 sources, want 66", checked)
	}
	// Once the buckets have refilled they are dropped and new sources get their own.
	c.t = c.t.Add(5 * time.Minute)
	src := netip.MustParseAddr("10.200.0.1")
	if !guess(l, src) || !guess(l, src) {
		t.Fatal("a new source was limited after every bucket refilled")
	}
}

func TestLogBounded(t *testing.T) {
	l, c, buf := newTest(t, 1_000_000, 100)
	a := netip.MustParseAddr("192.0.2.1")
	for range 10_000 {
		guess(l, a)
	}
	if n := strings.Count(buf.String(), "\n"); n != logBurst {
		t.Fatalf("%d log lines for 10000 failures, want %d", n, logBurst)
	}
	if !strings.Contains(buf.String(), "source=192.0.2.1") || !strings.Contains(buf.String(), "admin authentication failed") {
		t.Fatalf("log line lacks the source:\n%s", buf)
	}
	c.t = c.t.Add(logEvery)
	guess(l, a)
	if !strings.Contains(buf.String(), "notLogged=9995") {
		t.Fatalf("the next line does not count the lines left out:\n%s", buf)
	}
}
