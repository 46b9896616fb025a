package proxy

import (
	"net/http"
	"sync"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// clientLimits counts each client's requests and tunnels in flight. An
// entry exists only while its count is above zero, so the maps hold at
// most one entry per request or tunnel in flight.
type clientLimits struct {
	mu       sync.Mutex
	requests map[string]int
	tunnels  map[string]int
}

// take counts one more for key in m if it has fewer than max (max <= 0:
// no limit) and reports whether it did.
func (l *clientLimits) take(m *map[string]int, key string, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	n := (*m)[key]
	if max > 0 && n >= max {
		return false
	}
	(*m)[key] = n + 1
	return true
}

func (l *clientLimits) put(m *map[string]int, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := (*m)[key]; n > 1 {
		(*m)[key] = n - 1
	} else {
		delete(*m, key)
	}
}

// entries is the number of map entries held (tests check it drains).
func (l *clientLimits) entries() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.requests) + len(l.tunnels)
}

// limitKey names who a request counts against: its principal when auth
// identified one, else its source address (IPv6 by /64, as the connection
// limits count it).
func limitKey(cc *clientConn, p *auth.Principal) string {
	if p != nil {
		return principalKey(p)
	}
	return "addr:" + clientKey(cc.c.RemoteAddr()).String()
}

// limitClient counts the request or tunnel of a against its client in
// m, which allows max at once (what names them: "requests", "tunnels"). At
// the limit it refuses (429); otherwise a.release gives the count back.
func (s *Server) limitClient(e *entry, a *admitted, m *map[string]int, max int, what string) *refusal {
	key := limitKey(e.cc, a.principal)
	if !s.inflight.take(m, key, max) {
		return &refusal{outcome: OutcomeClientLimit, status: http.StatusTooManyRequests, target: a.target.Name, limit: what, max: max}
	}
	a.release = func() { s.inflight.put(m, key) }
	return nil
}
