package metrics

import (
	"net/http"
	"strconv"
	"sync"
)

// Label bounds. Every label value a client can influence goes through
// them, so the number of series stays bounded whatever clients send: the
// tag (a client header) and the status code (an origin the client chose
// may answer any code).
const (
	// DefaultTagLimit is the number of distinct tags counted per target.
	DefaultTagLimit = 100
	// OtherTag is the tag of requests whose tag came after the target's
	// TagLimit others.
	OtherTag = "other"
	// OddStatusLimit is the number of distinct status codes net/http does
	// not know (520, 599…) kept per target; later ones are counted by
	// class ("5xx").
	OddStatusLimit = 10
)

// Options bound the labels of Metrics.
type Options struct {
	// TagLimit is the number of distinct tags counted per target; requests
	// with a tag beyond them count with tag OtherTag. 0 counts every tag
	// as OtherTag. Untagged requests keep the empty tag.
	TagLimit int
	// Version is the version label of proxy_hopper_build_info ("unknown"
	// when empty).
	Version string
}

// DefaultOptions are the options of New.
func DefaultOptions() Options { return Options{TagLimit: DefaultTagLimit} }

// targetLabels are the client-influenced label values one target has
// used so far. Each target has its own, so targets share no lock.
type targetLabels struct {
	mu   sync.Mutex
	tags map[string]struct{}
	odd  map[int]string // status codes net/http does not know → label
}

// labelsOf returns target's label set. target is a configured target's
// name (never a client's string), so the map is as bounded as the config.
func (m *Metrics) labelsOf(target string) *targetLabels {
	if v, ok := m.perTarget.Load(target); ok {
		return v.(*targetLabels)
	}
	v, _ := m.perTarget.LoadOrStore(target, &targetLabels{tags: map[string]struct{}{}, odd: map[int]string{}})
	return v.(*targetLabels)
}

// tag returns the label value of tag (already cleaned): itself while the
// target has fewer than limit distinct tags or has seen it, else OtherTag.
func (l *targetLabels) tag(tag string, limit int) string {
	if tag == "" {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.tags[tag]; ok {
		return tag
	}
	if len(l.tags) >= limit {
		return OtherTag
	}
	l.tags[tag] = struct{}{}
	return tag
}

// status returns the status_code label of code (100…599): the code when
// net/http knows it or the target has kept fewer than OddStatusLimit odd
// ones, else its class ("5xx").
func (m *Metrics) statusLabel(l *targetLabels, code int) string {
	if http.StatusText(code) != "" {
		return m.status[code]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.odd[code]; ok {
		return s
	}
	if len(l.odd) >= OddStatusLimit {
		return strconv.Itoa(code/100) + "xx"
	}
	l.odd[code] = m.status[code]
	return m.status[code]
}
