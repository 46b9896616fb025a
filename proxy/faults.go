package proxy

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Whose fault a failed attempt is. The pool only ever hears about IP
// faults; see README "Pool semantics" for the rule.
//
//   - A local fault is the agent's own: it could not make a socket or a
//     connection for want of descriptors, buffers, memory or local ports.
//     It says nothing about the IP, and the next IP would fail the same
//     way, so it is neither counted nor retried.
//   - A destination fault is the destination's: the upstream proxy
//     answered, and its answer says it could not reach the destination
//     (CONNECT answered 5xx), or the answer is a 502/504 for the
//     destination. Such an answer is suspect: it is not counted when it
//     comes, and the request tries one other IP. The same answer from a
//     second IP confirms a destination fault: the request stops, nothing
//     is counted, and for destFaultTTL later requests to that destination
//     are not retried on other IPs. Another IP reaching the destination
//     instead shows that the first IP was at fault: its failure is counted
//     then.
//   - Anything else (no connection to the upstream proxy, resets, time-outs,
//     407, 429, 503 from an origin) is the IP's fault, counted and retried.

// ReasonLocal is the attempt reason of a local fault.
const ReasonLocal = "local_resources"

// localErrnos are socket errors that mean the agent itself is short of
// something, whatever the address it dials.
var localErrnos = []syscall.Errno{
	syscall.EMFILE,        // per-process descriptor limit
	syscall.ENFILE,        // system-wide descriptor limit
	syscall.ENOBUFS,       // no buffer space
	syscall.ENOMEM,        // no kernel memory
	syscall.EADDRNOTAVAIL, // no free local port (or local address gone)
	syscall.EAGAIN,        // connect(2): no free local port on some kernels
}

// IsLocalError reports whether err is the agent's own shortage (out of
// descriptors, buffers, memory or local ports) rather than anything the
// remote side did. Such errors must never count against an upstream IP.
func IsLocalError(err error) bool {
	if err == nil {
		return false
	}
	for _, e := range localErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// suspectReason reports whether an attempt's failure reason is an upstream
// answer that may be about the destination rather than the IP: a CONNECT
// answered 500, 502, 503 or 504 (the proxy itself answers a CONNECT, and a
// 5xx is its way of saying it could not reach the destination), or a 502
// or 504 answer to a plain request.
func suspectReason(reason string) bool {
	if code, ok := strings.CutPrefix(reason, "connect_status_"); ok {
		switch code {
		case "500", "502", "503", "504":
			return true
		}
		return false
	}
	return reason == "status_502" || reason == "status_504"
}

// destFaultTTL is how long a confirmed destination fault stops the
// retrying of that destination's requests.
const destFaultTTL = time.Minute

// maxDestFaults bounds the destinations remembered per target name.
const maxDestFaults = 4096

// destFaults remembers the destinations confirmed as failing, per target
// name (shared by its generations through upstreamDir). Bounded by
// maxDestFaults; entries expire after destFaultTTL.
type destFaults struct {
	mu sync.Mutex
	m  map[string]destFault
	n  atomic.Int32 // len(m), read without mu by forget
}

type destFault struct {
	reason string
	until  time.Time
}

// confirmed reports whether dest failed with reason on two IPs lately.
func (d *destFaults) confirmed(dest, reason string, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, ok := d.m[dest]
	if ok && !now.Before(f.until) {
		delete(d.m, dest)
		d.n.Store(int32(len(d.m)))
		return false
	}
	return ok && f.reason == reason
}

// confirm records that dest failed with reason on two IPs.
func (d *destFaults) confirm(dest, reason string, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]destFault{}
	}
	if _, ok := d.m[dest]; !ok && len(d.m) >= maxDestFaults {
		for k, f := range d.m {
			if !now.Before(f.until) {
				delete(d.m, k)
			}
		}
		for k := range d.m {
			if len(d.m) < maxDestFaults {
				break
			}
			delete(d.m, k)
		}
	}
	d.m[dest] = destFault{reason: reason, until: now.Add(destFaultTTL)}
	d.n.Store(int32(len(d.m)))
}

// forget drops dest: it was reached.
func (d *destFaults) forget(dest string) {
	if d.n.Load() == 0 {
		return // the common case, without the lock
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.m, dest)
	d.n.Store(int32(len(d.m)))
}

// size is the number of destinations remembered.
func (d *destFaults) size() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.m)
}

// suspicion follows the suspect answers of one request, whose attempts
// all go to one destination.
type suspicion struct {
	dest    string
	pending []attemptRecord // suspect answers not decided yet: IP and reason
}

// verdict of a suspect answer.
type verdict uint8

const (
	// undecided: not counted; try one other IP to tell.
	undecided verdict = iota
	// destination: a destination fault; stop, count nothing.
	destination
)

// judge decides a suspect answer from ip with reason.
func (s *suspicion) judge(d *destFaults, ip, reason string, now time.Time) verdict {
	if d.confirmed(s.dest, reason, now) {
		s.pending = nil
		return destination
	}
	known := false
	for _, p := range s.pending {
		if p.Reason == reason && p.IP != ip {
			d.confirm(s.dest, reason, now)
			s.pending = nil
			return destination
		}
		known = known || p.IP == ip
	}
	if !known && len(s.pending) < 8 {
		s.pending = append(s.pending, attemptRecord{IP: ip, Reason: reason})
	}
	return undecided
}

// reached is called when the destination answered through some IP: the
// pending suspect IPs were at fault after all, and are returned to be
// counted, with the reason of their answer.
func (s *suspicion) reached(d *destFaults, ip string) []attemptRecord {
	d.forget(s.dest)
	var blame []attemptRecord
	for _, p := range s.pending {
		if p.IP != ip {
			blame = append(blame, p)
		}
	}
	s.pending = nil
	return blame
}

// ReasonOriginCertificate is an attempt whose TLS handshake with the
// origin failed certificate verification: the request was not sent.
const ReasonOriginCertificate = "origin_certificate"

// certificateFailures reports attempts that all failed certificate
// verification with the origin.
func certificateFailures(attempts []attemptRecord) bool {
	for _, a := range attempts {
		if a.Reason != ReasonOriginCertificate {
			return false
		}
	}
	return len(attempts) > 0
}

// failedAnswer is the status, error code and detail of the answer to a
// request whose every attempt failed before a response; stop is why the
// retries ended early ("local", "destination", or "").
func failedAnswer(stop, detail string) (int, string, string) {
	switch stop {
	case "local":
		return http.StatusServiceUnavailable, ReasonLocal,
			"The agent is out of local resources (file descriptors, buffers or ports); no upstream IP was blamed"
	case "destination":
		return http.StatusBadGateway, "destination_unreachable",
			"The upstream proxies could not reach the destination (the same answer through two IPs); no IP was blamed"
	}
	return http.StatusBadGateway, "connection_error", detail
}
