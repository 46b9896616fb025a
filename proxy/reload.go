package proxy

import (
	"maps"
	"sync/atomic"
)

// Hot reload: the agent builds a new generation of Target values (regex,
// retries, upstreams, TLS, identity) and hands them to SetTargets, which
// swaps the routing table in one atomic store. A target keeps its pool
// across generations (the agent passes the same *pool.Pool), so a request
// that matched the old generation may, on a retry, be handed an IP only the
// new one lists: the upstream directory, shared by every generation of a
// target name, knows the details of the IPs of the current and the previous
// generation.

// upstreamDir holds the upstreams of one target name, as the last two
// generations listed them (the newer wins).
type upstreamDir struct {
	m      atomic.Pointer[map[string]Upstream]
	faults destFaults // destinations confirmed as failing (faults.go)
}

// upstream returns the details of pool address ip: from t's own generation
// when it lists ip, else from the newest generation that does, else the
// bare address (targets built without Upstreams, as in tests).
func (t *Target) upstream(ip string) Upstream {
	up, ok := t.Upstreams[ip]
	if !ok && t.dir != nil {
		if m := t.dir.m.Load(); m != nil {
			up = (*m)[ip]
		}
	}
	if up.Addr == "" {
		up.Addr = ip
	}
	return up
}

// link prepares the new generation before it is published: each target
// takes over the directory and, with the same TLS config, the transport of
// the old target of its name, and the directory learns its upstreams.
func (s *Server) link(old, targets []*Target) {
	byName := make(map[string]*Target, len(old))
	for _, t := range old {
		byName[t.Name] = t
	}
	for _, t := range targets {
		prev := byName[t.Name]
		if prev == t {
			prev = nil // the same target again
		}
		if t.dir == nil {
			if prev != nil && prev.dir != nil {
				t.dir = prev.dir
			} else {
				t.dir = &upstreamDir{}
			}
		}
		m := make(map[string]Upstream, len(t.Upstreams))
		if prev != nil && prev.dir == t.dir {
			maps.Copy(m, prev.Upstreams)
		}
		maps.Copy(m, t.Upstreams)
		t.dir.m.Store(&m)
		if t.tr == nil {
			if prev != nil && prev.tr != nil && prev.TLS == t.TLS {
				t.tr = prev.tr
			} else {
				t.tr = newTransport(tlsOrDefault(t.TLS), s.opts.Upstream, s.dialer(), s.opts.MaxHeaderBytes)
			}
		}
	}
}

// settle runs after the swap: each transport keeps idle connections only
// for the IPs its target now lists, and transports no target uses any more
// close theirs (connections still carrying a request close when it ends).
func (s *Server) settle(old, targets []*Target) {
	used := make(map[*transport]bool, len(targets))
	for _, t := range targets {
		used[t.tr] = true
		t.tr.setLive(t.Upstreams)
	}
	for _, t := range old {
		if t.tr != nil && !used[t.tr] {
			t.tr.retire()
		}
	}
}

// setLive limits the idle connections t keeps to the proxy addresses in
// ups (nil: no limit) and closes the idle ones of other addresses. A target
// in force uses t: if an earlier table retired it (a reload rolled back),
// it keeps connections again.
func (t *transport) setLive(ups map[string]Upstream) {
	var live map[string]bool
	if ups != nil {
		live = make(map[string]bool, len(ups))
		for a := range ups {
			live[a] = true
		}
	}
	var drop []*upConn
	t.mu.Lock()
	t.live = live
	t.retired = false
	for k, list := range t.idle {
		if !t.keeps(k) {
			drop = append(drop, list...)
			delete(t.idle, k)
		}
	}
	t.mu.Unlock()
	for _, c := range drop {
		c.Close()
	}
}

// retire closes every idle connection, and every connection returned later.
func (t *transport) retire() {
	t.mu.Lock()
	t.retired = true
	t.mu.Unlock()
	t.closeIdle()
}

// keeps reports whether idle connections of k may be kept. t.mu is held.
func (t *transport) keeps(k connKey) bool {
	return !t.retired && (t.live == nil || t.live[k.proxy])
}
