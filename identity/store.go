package identity

import (
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Rotation reasons, as passed to Store.Rotate and Options.OnRotate.
const (
	ReasonQuarantine = "quarantine" // the IP is back from quarantine
	Reason429        = "429"        // a response was 429 and RotateOn429 is set
	ReasonRequests   = "requests"   // RotateAfterRequests responses were counted
)

// Clock is the source of time for identity creation stamps; pool.RealClock
// and *pool.FakeClock satisfy it.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Options configures NewStore.
type Options struct {
	// Rand picks profiles and identity IDs. Default: a ChaCha8 source
	// seeded from crypto/rand. The store serialises its use.
	Rand rand.Source
	// Clock stamps identities. Default: the wall clock.
	Clock Clock
	// OnRotate, if set, is called after an identity is replaced, with the
	// IP and one of the Reason constants. It runs synchronously, outside
	// the store's lock, and must not block.
	OnRotate func(addr, reason string)
}

// Store holds the identities of one target's IPs, keyed by IP address. It
// is safe for concurrent use and shares nothing with other stores.
type Store struct {
	cfg      atomic.Pointer[Config]
	profiles []Profile
	clock    Clock
	onRotate func(addr, reason string)

	mu  sync.Mutex // guards rng and ids
	rng *rand.Rand
	ids map[string]*Identity
}

// NewStore returns an empty store applying cfg.
func NewStore(cfg Config, opts Options) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{profiles: Profiles(), clock: opts.Clock, onRotate: opts.OnRotate, ids: map[string]*Identity{}}
	if s.clock == nil {
		s.clock = realClock{}
	}
	src := opts.Rand
	if src == nil {
		var seed [32]byte
		crand.Read(seed[:])
		src = rand.NewChaCha8(seed)
	}
	s.rng = rand.New(src)
	s.cfg.Store(&cfg)
	return s, nil
}

// Config returns the policy in force.
func (s *Store) Config() Config { return *s.cfg.Load() }

// Update replaces the policy. Header, cookie and warm-up settings take
// effect at once, for existing identities too; a changed Profile applies to
// identities created from now on.
func (s *Store) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.cfg.Store(&cfg)
	return nil
}

// Get returns addr's identity, creating it on first use.
func (s *Store) Get(addr string) *Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.ids[addr]
	if !ok {
		id = s.newIdentity(addr, "")
		s.ids[addr] = id
	}
	return id
}

// Rotate replaces addr's identity with a new one: a new profile (the pinned
// one, or a random one other than the old identity's), an empty jar, a zero
// request count and, with warm-up enabled, a pending warm-up. reason is one
// of the Reason constants. An addr without an identity has nothing to
// rotate: its first Get creates a fresh one anyway.
func (s *Store) Rotate(addr, reason string) {
	s.mu.Lock()
	old, ok := s.ids[addr]
	if ok {
		s.ids[addr] = s.newIdentity(addr, old.profile.name)
	}
	s.mu.Unlock()
	if ok && s.onRotate != nil {
		s.onRotate(addr, reason)
	}
}

// OnResponse counts a response received through addr and rotates its
// identity on 429 (with RotateOn429) or when the count reaches
// RotateAfterRequests. It reports whether it rotated. Call it once per
// response, warm-up included; an addr without an identity is ignored.
func (s *Store) OnResponse(addr string, status int) (rotated bool) {
	cfg := s.cfg.Load()
	s.mu.Lock()
	id, ok := s.ids[addr]
	if !ok {
		s.mu.Unlock()
		return false
	}
	n := id.requests.Add(1)
	var reason string
	switch {
	case !cfg.Enabled:
	case status == 429 && cfg.RotateOn429:
		reason = Reason429
	case cfg.RotateAfterRequests > 0 && n >= int64(cfg.RotateAfterRequests):
		reason = ReasonRequests
	}
	if reason != "" {
		s.ids[addr] = s.newIdentity(addr, id.profile.name)
	}
	s.mu.Unlock()
	if reason != "" && s.onRotate != nil {
		s.onRotate(addr, reason)
	}
	return reason != ""
}

// Forget drops addr's identity, for an IP that left the pool.
func (s *Store) Forget(addr string) {
	s.mu.Lock()
	delete(s.ids, addr)
	s.mu.Unlock()
}

// Len returns the number of identities held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// newIdentity creates addr's next identity; prev is the profile of the one
// it replaces, avoided when the profile is picked at random. s.mu is held.
func (s *Store) newIdentity(addr, prev string) *Identity {
	cfg := s.cfg.Load()
	return &Identity{
		id:       fmt.Sprintf("%016x", s.rng.Uint64()),
		addr:     addr,
		profile:  s.pickProfile(cfg.Profile, prev),
		created:  s.clock.Now(),
		cfg:      &s.cfg,
		sessions: map[string]*Session{},
	}
}

// pickProfile returns the pinned profile, or a random one other than prev
// when there is a choice. s.mu is held.
func (s *Store) pickProfile(pinned, prev string) Profile {
	if pinned != "" {
		for _, p := range s.profiles {
			if p.name == pinned {
				return p
			}
		}
	}
	candidates := make([]Profile, 0, len(s.profiles))
	for _, p := range s.profiles {
		if p.name != prev {
			candidates = append(candidates, p)
		}
	}
	if len(candidates) == 0 {
		candidates = s.profiles
	}
	return candidates[s.rng.IntN(len(candidates))]
}
