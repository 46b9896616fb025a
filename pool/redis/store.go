package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/store"
)

// DefaultResync is how often a Store compares the stored version with the
// last one it saw, so that a lost notification (a Redis restart, a broken
// subscription) is caught up with.
const DefaultResync = 2 * time.Second

// StoreKeys returns the keys and the notification channel of the runtime
// configuration under prefix: <prefix>{repo}:version and
// <prefix>{repo}:doc (one hash slot, for the script) and the channel
// <prefix>repo:changes.
func StoreKeys(prefix string) (version, doc, channel string) {
	return prefix + "{repo}:version", prefix + "{repo}:doc", prefix + "repo:changes"
}

// storeCAS stores ARGV[2] as the Doc of version ARGV[1]+1 if the stored
// version is ARGV[1] (0: none). The version key holds "<version>:<write>"
// (ARGV[4], the Doc's Write): versions count again from 1 after Redis
// loses the keys, the pair does not repeat. The pair is announced on
// ARGV[3]. It answers the new version, or -1 when another writer was first.
var storeCAS = goredis.NewScript(`
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^(%d+)')) or 0 end
if v ~= tonumber(ARGV[1]) then return -1 end
v = v + 1
local id = v .. ':' .. ARGV[4]
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], id)
redis.call('PUBLISH', ARGV[3], id)
return v
`)

// StoreOptions configures Store; zero values mean the defaults.
type StoreOptions struct {
	Resync time.Duration // DefaultResync
}

// Store is the runtime configuration in Redis (store.Store), shared by
// every agent on the same Redis and prefix: updates are a check-and-set on
// the version (a Lua script), announced on a channel that every Store
// subscribes to, and compared every Resync in case an announcement was
// missed.
type Store struct {
	b                     *Backend
	verKey, docKey, topic string
	n                     *store.Notifier

	mu     sync.Mutex
	seen   string // last "<version>:<write>" seen ("" none stored, "?" before the first look)
	closed bool

	cancel context.CancelFunc
	done   chan struct{}
}

var _ store.Store = (*Store)(nil)

// Store returns a handle on the runtime configuration under b's prefix.
// It watches for changes until Close; close it before b.
func (b *Backend) Store(o StoreOptions) *Store {
	if o.Resync <= 0 {
		o.Resync = DefaultResync
	}
	s := &Store{b: b, n: store.NewNotifier(), seen: "?", done: make(chan struct{})}
	s.verKey, s.docKey, s.topic = StoreKeys(b.opts.Prefix)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.watch(ctx, o.Resync)
	return s
}

// Load implements store.Store.
func (s *Store) Load(ctx context.Context) (store.Doc, bool, error) {
	d, seeded, _, err := s.load(ctx)
	return d, seeded, err
}

// load reads the Doc and the version key together (MGET: one moment).
func (s *Store) load(ctx context.Context) (d store.Doc, seeded bool, version int64, err error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return store.Doc{}, false, 0, store.ErrClosed
	}
	vals, err := s.b.client.MGet(ctx, s.verKey, s.docKey).Result()
	if err != nil {
		return store.Doc{}, false, 0, fmt.Errorf("%w: read runtime configuration: %w", pool.ErrBackendUnavailable, err)
	}
	if v, ok := vals[0].(string); ok {
		n, _, _ := strings.Cut(v, ":")
		if version, err = strconv.ParseInt(n, 10, 64); err != nil {
			return store.Doc{}, false, 0, fmt.Errorf("read runtime configuration: version %q: %w", v, err)
		}
	}
	raw, ok := vals[1].(string)
	if !ok {
		return store.Doc{}, false, version, nil
	}
	if d, err = store.Decode([]byte(raw)); err != nil {
		return store.Doc{}, false, 0, err
	}
	return d, true, version, nil
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn func(*store.Doc, bool) error) (store.Doc, error) {
	for attempt := range store.MaxUpdateAttempts {
		d, seeded, version, err := s.load(ctx)
		if err != nil {
			return store.Doc{}, err
		}
		if err := fn(&d, seeded); err != nil {
			return store.Doc{}, err
		}
		d.Version, d.Write = version+1, store.NewWriteID()
		b, err := store.Encode(d)
		if err != nil {
			return store.Doc{}, err
		}
		got, err := storeCAS.Run(ctx, s.b.client, []string{s.verKey, s.docKey}, version, b, s.topic, d.Write).Int64()
		if err != nil {
			return store.Doc{}, fmt.Errorf("%w: store runtime configuration: %w", pool.ErrBackendUnavailable, err)
		}
		if got == d.Version {
			s.saw(d.ID())
			s.n.Notify()
			return store.Clone(d), nil
		}
		// Another writer was first: read again after a short, growing,
		// random pause so that writers do not collide in step.
		pause := time.Duration(rand.Int64N(int64(time.Millisecond)*int64(attempt+1))) + time.Millisecond
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return store.Doc{}, ctx.Err()
		}
	}
	return store.Doc{}, store.ErrContended
}

// saw records a stored "<version>:<write>" as seen ("" none); it reports
// whether it is news.
func (s *Store) saw(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	news := id != s.seen
	s.seen = id
	return news
}

// Changed implements store.Store.
func (s *Store) Changed() <-chan struct{} { return s.n.C() }

// Close implements store.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return nil
}

// watch announces versions from the channel and from a resync every
// interval, until ctx ends.
func (s *Store) watch(ctx context.Context, every time.Duration) {
	defer close(s.done)
	ps := s.b.client.Subscribe(ctx, s.topic)
	defer ps.Close()
	msgs := ps.Channel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	s.resync(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			if s.saw(m.Payload) {
				s.n.Notify()
			}
		case <-tick.C:
			s.resync(ctx)
		}
	}
}

// resync notifies when the stored version is not the last one seen.
// After a Redis restart the pool's connections are stale and each fails
// once: a failed read is tried again at once, then at the next tick.
func (s *Store) resync(ctx context.Context) {
	for range 2 {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		v, err := s.b.client.Get(rctx, s.verKey).Result()
		cancel()
		switch {
		case errors.Is(err, goredis.Nil):
			v = ""
		case err != nil:
			continue
		}
		if s.saw(v) {
			s.n.Notify()
		}
		return
	}
}
