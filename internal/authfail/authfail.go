// Package authfail limits how fast one source may guess a secret (the
// admin token, the metrics token) and logs the failures without letting
// the log be flooded.
//
// Each source (an IPv4 address, an IPv6 /64) has a token bucket of
// attempts: an attempt takes one, a success gives it back, so only
// failures use the bucket up. A source that has used it up is refused
// (the caller answers 429) until the bucket refills, without its
// guess being checked. Memory is bounded: at most MaxSources buckets;
// past that, new sources share one overflow bucket.
package authfail

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults of Options.
const (
	DefaultBurst      = 10
	DefaultEvery      = 6 * time.Second // 10 failures a minute once the burst is used
	DefaultMaxSources = 4096
	logBurst          = 5
	logEvery          = 10 * time.Second
)

// Options configures a Limiter.
type Options struct {
	Burst      int           // failures a fresh source may make at once (DefaultBurst)
	Every      time.Duration // one more failure allowed per Every (DefaultEvery)
	MaxSources int           // buckets kept (DefaultMaxSources)
	What       string        // what is guessed, for the log ("admin token")
	Log        *slog.Logger  // default slog.Default()
	Now        func() time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

// refill brings b up to now; it reports whether b is full.
func (b *bucket) refill(now time.Time, burst float64, every time.Duration) bool {
	if el := now.Sub(b.at); el > 0 {
		b.tokens = min(burst, b.tokens+float64(el)/float64(every))
		b.at = now
	}
	return b.tokens >= burst
}

// wait is how long until b holds one token.
func (b *bucket) wait(every time.Duration) time.Duration {
	return time.Duration((1 - b.tokens) * float64(every))
}

// Limiter is safe for concurrent use.
type Limiter struct {
	o     Options
	burst float64

	mu        sync.Mutex
	sources   map[netip.Prefix]*bucket
	overflow  bucket
	lastSweep time.Time
	logB      bucket
	dropped   int // failure lines not logged since the last one
}

// New returns a Limiter.
func New(o Options) *Limiter {
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.Every <= 0 {
		o.Every = DefaultEvery
	}
	if o.MaxSources <= 0 {
		o.MaxSources = DefaultMaxSources
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.What == "" {
		o.What = "token"
	}
	now := o.Now()
	return &Limiter{
		o: o, burst: float64(o.Burst), sources: map[netip.Prefix]*bucket{},
		overflow: bucket{tokens: float64(o.Burst), at: now},
		logB:     bucket{tokens: logBurst, at: now},
	}
}

// Source is the address part of an http.Request's RemoteAddr (the zero
// Addr when it has none).
func Source(remoteAddr string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		return ap.Addr()
	}
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a
}

func keyOf(src netip.Addr) netip.Prefix {
	src = src.Unmap()
	if src.Is6() {
		p, _ := src.Prefix(64)
		return p
	}
	p, _ := src.Prefix(src.BitLen()) // IPv4 /32; the zero Addr gives the zero Prefix
	return p
}

// bucketOf returns src's bucket, making one if there is room; else the
// shared overflow bucket. Call with mu held.
func (l *Limiter) bucketOf(src netip.Addr, now time.Time) *bucket {
	k := keyOf(src)
	if b, ok := l.sources[k]; ok {
		return b
	}
	if len(l.sources) >= l.o.MaxSources && now.Sub(l.lastSweep) >= time.Second {
		// A full bucket is the same as none: drop those. At most once a
		// second, so a flood of new sources cannot make every call sweep.
		l.lastSweep = now
		for k, b := range l.sources {
			if b.refill(now, l.burst, l.o.Every) {
				delete(l.sources, k)
			}
		}
	}
	if len(l.sources) >= l.o.MaxSources {
		return &l.overflow
	}
	b := &bucket{tokens: l.burst, at: now}
	l.sources[k] = b
	return b
}

// Take reserves one attempt for src. When src has used up its failures it
// returns false and how long until it may try again; its guess must then
// not be checked. After a successful check call Succeeded, after a failed
// one Failed.
func (l *Limiter) Take(src netip.Addr) (retryAfter time.Duration, ok bool) {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketOf(src, now)
	b.refill(now, l.burst, l.o.Every)
	if b.tokens < 1 {
		return max(b.wait(l.o.Every), time.Second), false
	}
	b.tokens--
	return 0, true
}

// Succeeded gives back the attempt Take reserved for src.
func (l *Limiter) Succeeded(src netip.Addr) {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketOf(src, now)
	b.tokens = min(l.burst, b.tokens+1)
	if b != &l.overflow && b.refill(now, l.burst, l.o.Every) {
		delete(l.sources, keyOf(src))
	}
}

// Failed logs a failed attempt from src (reason: "wrong token", ...) at
// WARN, at most logBurst lines at once and one per logEvery after that;
// the next line logged counts the ones left out.
func (l *Limiter) Failed(src netip.Addr, reason string) {
	now := l.o.Now()
	l.mu.Lock()
	l.logB.refill(now, logBurst, logEvery)
	if l.logB.tokens < 1 {
		l.dropped++
		l.mu.Unlock()
		return
	}
	l.logB.tokens--
	dropped := l.dropped
	l.dropped = 0
	left := 0.0
	if b, ok := l.sources[keyOf(src)]; ok {
		left = b.tokens
	} else {
		left = l.overflow.tokens
	}
	l.mu.Unlock()
	l.o.Log.Warn(l.o.What+" authentication failed", "source", src.String(), "reason", reason,
		"attemptsLeft", int(left), "notLogged", dropped)
}

// Refused logs (under the same limit as Failed) that src was refused
// because it has used up its failures.
func (l *Limiter) Refused(src netip.Addr) { l.Failed(src, "too many failures") }

// Sources is how many sources have a bucket now (for tests).
func (l *Limiter) Sources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}
