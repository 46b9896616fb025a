package store

import (
	"context"
	"sync"
)

// Memory is a Store in the process (the memory backend): one agent's
// runtime configuration, lost when it exits. Handles made with Share see
// the same Doc, as agents on one Redis do.
type Memory struct {
	shared *memDoc
	n      *Notifier
	closed bool
}

type memDoc struct {
	mu       sync.Mutex
	doc      []byte // encoded Doc; nil: never stored
	version  int64
	watchers map[*Memory]struct{}
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty Memory store.
func NewMemory() *Memory {
	m := &Memory{shared: &memDoc{watchers: map[*Memory]struct{}{}}, n: NewNotifier()}
	m.shared.watchers[m] = struct{}{}
	return m
}

// Share returns another handle on m's Doc with its own notifications.
func (m *Memory) Share() *Memory {
	o := &Memory{shared: m.shared, n: NewNotifier()}
	m.shared.mu.Lock()
	m.shared.watchers[o] = struct{}{}
	m.shared.mu.Unlock()
	return o
}

// Load implements Store.
func (m *Memory) Load(ctx context.Context) (Doc, bool, error) {
	s := m.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.closed {
		return Doc{}, false, ErrClosed
	}
	if s.doc == nil {
		return Doc{}, false, nil
	}
	d, err := Decode(s.doc)
	return d, err == nil, err
}

// Update implements Store. The lock is held while fn runs, so there is
// never a conflict to retry.
func (m *Memory) Update(ctx context.Context, fn func(*Doc, bool) error) (Doc, error) {
	if err := ctx.Err(); err != nil {
		return Doc{}, err
	}
	s := m.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.closed {
		return Doc{}, ErrClosed
	}
	var d Doc
	seeded := s.doc != nil
	if seeded {
		var err error
		if d, err = Decode(s.doc); err != nil {
			return Doc{}, err
		}
	}
	if err := fn(&d, seeded); err != nil {
		return Doc{}, err
	}
	d.Version, d.Write = s.version+1, NewWriteID()
	b, err := Encode(d)
	if err != nil {
		return Doc{}, err
	}
	s.doc, s.version = b, d.Version
	for w := range s.watchers {
		w.n.Notify()
	}
	return Clone(d), nil
}

// Changed implements Store.
func (m *Memory) Changed() <-chan struct{} { return m.n.C() }

// Close implements Store.
func (m *Memory) Close() error {
	m.shared.mu.Lock()
	defer m.shared.mu.Unlock()
	m.closed = true
	delete(m.shared.watchers, m)
	return nil
}
