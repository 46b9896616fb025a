package pool

import (
	"context"
	"errors"
	"slices"
	"time"
)

// Sentinel errors shared by the pool and its backends.
var (
	// ErrNoIP means no IP became available within the wait limit.
	ErrNoIP = errors.New("no IP available")
	// ErrQueueFull means too many requests wait for an IP already.
	ErrQueueFull = errors.New("too many requests waiting for an IP")
	// ErrClosed means the pool or backend is shutting down.
	ErrClosed = errors.New("pool closed")
	// ErrUnknownTarget means the backend has never been seeded for the target.
	ErrUnknownTarget = errors.New("unknown target")
	// ErrBackendUnavailable means the storage behind the pool cannot be reached.
	ErrBackendUnavailable = errors.New("pool backend unavailable")
	// ErrUnknownIP means the address is not in the target's pool.
	ErrUnknownIP = errors.New("unknown IP")
	// ErrNotQuarantined means the IP is not quarantined (nor marked for
	// quarantine while in use).
	ErrNotQuarantined = errors.New("IP not quarantined")
)

// MaxExcept bounds the IPs a PopExcept looks at: a request retried more
// often than this may get one of its earliest tries again. It bounds the
// work per call in the backend (a Redis script scans at most MaxExcept+1
// queued IPs per caller).
const MaxExcept = 32

// ExceptSet is except as backends use it: duplicates and empty strings
// dropped, and only the last MaxExcept entries (the latest tries) kept.
// It returns nil for an empty set.
func ExceptSet(except []string) []string {
	if len(except) == 0 {
		return nil
	}
	out := make([]string, 0, min(len(except), MaxExcept))
	for i := len(except) - 1; i >= 0 && len(out) < MaxExcept; i-- {
		if a := except[i]; a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil
	}
	slices.Reverse(out)
	return out
}

// State is where an IP stands in its target's pool.
type State string

const (
	StateAvailable   State = "available"
	StateInUse       State = "in-use"
	StateCooling     State = "cooling"
	StateQuarantined State = "quarantined"
)

// IPState is one IP as the backend stores it.
type IPState struct {
	Addr     string
	State    State
	Until    time.Time // cooling: ready time; quarantined: release time; in-use: since
	Failures int
	// PendingQuarantine is set on an IP in use that was quarantined (Hold)
	// while its holder used it: when returned it goes into quarantine until
	// this time, unless it has passed by then. Zero otherwise.
	PendingQuarantine time.Time
}

// Backend is pure storage for per-target IP pools: it holds the queue of IPs,
// their cooldown schedule, failure counters and quarantine schedule. All
// policy (when to quarantine, for how long, when to release) lives in Pool.
// Targets never share state inside a backend.
type Backend interface {
	// Seed makes addrs the IP set of target. The first call stores them as
	// available; later calls reconcile: new IPs join as available, IPs no
	// longer listed leave (an IP in use leaves when it is pushed back).
	// addrs may be empty: the target then exists with no IP, and Pop waits
	// for a later Seed to add one.
	Seed(ctx context.Context, target string, addrs []string) error
	// Pop takes the available IP that has waited longest, waiting up to
	// timeout for one. Waiters are served first come, first served. It
	// returns ErrNoIP on timeout, ErrClosed once the backend is closed, and
	// ctx.Err() when ctx ends.
	Pop(ctx context.Context, target string, timeout time.Duration) (string, error)
	// PopExcept is Pop for a caller that must not get an IP in except
	// (the IPs its request already tried; see ExceptSet for the bound)
	// while target has another IP that is not quarantined: available,
	// cooling or in use, so that it may free up within the wait (an IP in
	// use counts until it is returned, also one marked by Hold or no
	// longer seeded; waiters look again when it goes). It takes
	// the available IP outside except that has waited longest, waiting up
	// to timeout for one. Only while every IP of target that is not
	// quarantined is in except does it take any IP, as Pop would. A caller
	// keeps its place in the FIFO: an IP it may take goes to it before
	// any caller that came later, and an IP it may not take goes to the
	// next caller that may (no caller holds back an IP it skips). Errors
	// are Pop's.
	PopExcept(ctx context.Context, target string, timeout time.Duration, except []string) (string, error)
	// Push returns addr to the pool; it can be popped from readyAt on.
	Push(ctx context.Context, target, addr string, readyAt time.Time) error
	// IncrFailures adds one to addr's consecutive failures and returns the count.
	IncrFailures(ctx context.Context, target, addr string) (int, error)
	// ResetFailures sets addr's consecutive failures to zero.
	ResetFailures(ctx context.Context, target, addr string) error
	// Quarantine holds addr out of the pool until the given time.
	Quarantine(ctx context.Context, target, addr string, until time.Time) error
	// PopExpired removes and returns the quarantined IPs whose time is up.
	// Each expired IP is returned by exactly one call.
	PopExpired(ctx context.Context, target string, now time.Time) ([]string, error)
	// NextExpiry returns the earliest quarantine release time, if any.
	NextExpiry(ctx context.Context, target string) (time.Time, bool, error)
	// Snapshot lists every IP of target with its state.
	Snapshot(ctx context.Context, target string) ([]IPState, error)
	// State returns addr's entry of Snapshot, or ErrUnknownIP.
	State(ctx context.Context, target, addr string) (IPState, error)
	// Take takes addr as Pop would, but only if it is available now (a
	// cooling IP whose readyAt has passed is) and no caller of this
	// process waits in Pop for target; it reports whether it did. A taken
	// IP is in use until pushed back. ErrUnknownIP if addr is not in the pool.
	Take(ctx context.Context, target, addr string) (bool, error)
	// Hold quarantines addr until the given time whatever its state,
	// replacing any quarantine it was in. An IP in use stays with its
	// holder and is marked instead (inUse is true): the Push that returns
	// it puts it in quarantine until then, unless that time has passed by
	// then. Quarantine (by the holder) clears the mark. ErrUnknownIP if
	// addr is not in the pool.
	Hold(ctx context.Context, target, addr string, until time.Time) (inUse bool, err error)
	// Unquarantine takes a quarantined addr out of quarantine before its
	// time, as PopExpired does: it is in use until pushed back. For an IP
	// in use marked by Hold it removes the mark and reports inUse; the
	// holder keeps it. ErrNotQuarantined for any other IP, ErrUnknownIP if
	// addr is not in the pool. The failure count is left alone.
	Unquarantine(ctx context.Context, target, addr string) (inUse bool, err error)
	// Close releases every waiter blocked in Pop with ErrClosed.
	Close() error
}

// ExpiryWatcher is implemented by backends that several processes share.
// Another process may quarantine an IP and die before its release timer
// fires; WatchExpiry makes the backend call f from time to time (and when
// it reconnects), and the pool then reads NextExpiry again. f must be
// cheap to call when nothing changed. stop unregisters f.
type ExpiryWatcher interface {
	WatchExpiry(target string, f func()) (stop func())
}
