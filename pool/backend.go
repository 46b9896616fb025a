package pool

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors shared by the pool and its backends.
var (
	// ErrNoIP means no IP became available within the wait limit.
	ErrNoIP = errors.New("no IP available")
	// ErrClosed means the pool or backend is shutting down.
	ErrClosed = errors.New("pool closed")
	// ErrUnknownTarget means the backend has never been seeded for the target.
	ErrUnknownTarget = errors.New("unknown target")
	// ErrBackendUnavailable means the storage behind the pool cannot be reached.
	ErrBackendUnavailable = errors.New("pool backend unavailable")
)

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
