package proxy

import (
	"net/http"
	"strconv"
	"sync"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// OutcomeClientLimit: the client (its key, JWT subject or, without auth,
// its address) had as many requests or tunnels in flight as it may.
const OutcomeClientLimit = "client_limit"

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

// admit counts a request (tunnel false) or a tunnel against its client.
// When the client is at its limit it answers 429 itself and returns false;
// otherwise the caller calls done when the request or tunnel ends.
// Transparent traffic is not limited here: its clients are the host's own
// processes, which share one address.
func (s *Server) admit(cc *clientConn, p *auth.Principal, head *RequestHead, tunnel bool) (done func(), ok bool) {
	m, max, what := &s.inflight.requests, s.opts.MaxClientRequests, "requests"
	if tunnel {
		m, max, what = &s.inflight.tunnels, s.opts.MaxClientTunnels, "tunnels"
	}
	key := limitKey(cc, p)
	if !s.inflight.take(m, key, max) {
		_ = writeJSONFields(cc.bw, http.StatusTooManyRequests, head.Minor, false, []Field{{Name: "Retry-After", Value: "1"}},
			map[string]any{"error": "client_" + what + "_limit",
				"detail": "This client has " + strconv.Itoa(max) + " " + what + " in flight already, as many as it may"})
		return nil, false
	}
	return func() { s.inflight.put(m, key) }, true
}
