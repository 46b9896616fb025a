// Package store keeps the runtime configuration: the providers, IP pools
// and targets that the YAML file seeds and the admin API changes while the
// agent runs. With the memory backend it lives in the process; with Redis
// it lives next to the pools, so every agent on that Redis and key prefix
// serves the same entities (pool/redis implements Store).
//
// The store knows nothing of what an entity means: each is a YAML-shaped
// mapping, the same one the config file holds under proxyProviders,
// ipPools or targets, so that the config package checks a changed entity
// with exactly the messages `validate` prints. A Doc is the whole set with
// a version; Update is a check-and-set on that version, so two agents
// changing the store at once never lose an update.
package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Entity is one entry as the YAML holds it (camelCase keys, "name" among
// them). It holds only JSON values: strings, float64, bool, nil,
// []any and map[string]any.
type Entity = map[string]any

// Doc is the runtime configuration: every provider, pool and target, in
// order (targets match first to last), and the version that stored it.
type Doc struct {
	Version int64 `json:"version"`
	// Write is random, new at every update: versions count again from 1
	// when the storage loses the Doc (a Redis restarted empty), so
	// (Version, Write) is what tells two stored Docs apart.
	Write     string   `json:"write,omitempty"`
	Providers []Entity `json:"proxyProviders"`
	Pools     []Entity `json:"ipPools"`
	Targets   []Entity `json:"targets"`
	// IPEdits are the admin JSON API's changes to targets' IP lists, by
	// target name, applied after the entities resolve.
	IPEdits map[string]*IPEdit `json:"ipEdits,omitempty"`
}

// IPEdit is what the admin API added to and removed from one target's
// resolved IPs (host:port each).
type IPEdit struct {
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
}

// MaxDocBytes bounds a stored Doc (as JSON), as config.MaxConfigBytes
// bounds the file: a change that would make it larger is refused, and a
// larger stored value is not read.
const MaxDocBytes = 4 << 20

// MaxUpdateAttempts bounds how often Update runs its function when other
// writers keep winning the check-and-set.
const MaxUpdateAttempts = 32

// Errors.
var (
	// ErrTooLarge: the Doc would exceed MaxDocBytes.
	ErrTooLarge = errors.New("runtime configuration too large")
	// ErrContended: MaxUpdateAttempts attempts all lost to other writers.
	ErrContended = errors.New("runtime configuration changed by others on every attempt")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// Store holds one Doc. Implementations are safe for concurrent use.
type Store interface {
	// Load returns the stored Doc; seeded is false when nothing was ever
	// stored (or the storage lost it, e.g. a Redis restarted without
	// persistence): then Doc is zero.
	Load(ctx context.Context) (d Doc, seeded bool, err error)
	// Update calls fn with a copy of the stored Doc (the zero Doc and
	// seeded false when there is none) and stores what fn leaves as the
	// next version, if no other writer stored one since the copy was
	// read; otherwise it reads again and calls fn again, at most
	// MaxUpdateAttempts times. An error from fn stores nothing and is
	// returned as it is. fn must not keep d.
	Update(ctx context.Context, fn func(d *Doc, seeded bool) error) (Doc, error)
	// Changed receives a value (coalesced: never blocks the writer) after
	// any writer, this one included, stored a version, and when a resync
	// finds the stored version differs from the last one seen (a missed
	// notification, or the storage lost the Doc).
	Changed() <-chan struct{}
	// Close stops the notifications; Changed is not closed.
	Close() error
}

// Encode returns d as JSON, or ErrTooLarge.
func Encode(d Doc) ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode runtime configuration: %w", err)
	}
	if len(b) > MaxDocBytes {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d MiB", ErrTooLarge, len(b), MaxDocBytes>>20)
	}
	return b, nil
}

// Decode parses a stored Doc. Numbers stay float64 as JSON has them.
func Decode(b []byte) (Doc, error) {
	var d Doc
	if len(b) > MaxDocBytes {
		return d, fmt.Errorf("%w: stored value is %d bytes", ErrTooLarge, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		return Doc{}, fmt.Errorf("decode runtime configuration: %w", err)
	}
	return d, nil
}

// Clone returns a deep copy of d (through JSON: entities hold JSON values
// only).
func Clone(d Doc) Doc {
	b, err := json.Marshal(d)
	if err != nil {
		panic(fmt.Sprintf("store: clone: %v", err)) // entities hold JSON values only
	}
	var c Doc
	if err := json.Unmarshal(b, &c); err != nil {
		panic(fmt.Sprintf("store: clone: %v", err))
	}
	return c
}

// NewWriteID returns a fresh Doc.Write.
func NewWriteID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// ID names one stored Doc: its version and write.
func (d Doc) ID() string { return fmt.Sprintf("%d:%s", d.Version, d.Write) }

// Name returns e's "name" ("" when it has none or it is not a string).
func Name(e Entity) string {
	s, _ := e["name"].(string)
	return s
}

// Notifier is the coalescing change channel implementations share.
type Notifier struct{ ch chan struct{} }

// NewNotifier returns a Notifier with room for one pending change.
func NewNotifier() *Notifier { return &Notifier{ch: make(chan struct{}, 1)} }

// Notify records a change without blocking (a pending one absorbs it).
func (n *Notifier) Notify() {
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

// C is the channel Changed returns.
func (n *Notifier) C() <-chan struct{} { return n.ch }
