package memory

import "time"

// ring is a growable FIFO of IPs.
type ring struct {
	buf        []*entry
	head, size int
}

func (r *ring) len() int { return r.size }

func (r *ring) push(e *entry) {
	if r.size == len(r.buf) {
		n := make([]*entry, max(8, 2*len(r.buf)))
		for i := 0; i < r.size; i++ {
			n[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = n, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = e
	r.size++
}

// at returns the i-th entry from the head; 0 <= i < len.
func (r *ring) at(i int) *entry { return r.buf[(r.head+i)%len(r.buf)] }

// removeAt deletes the i-th entry from the head, keeping the order of the
// rest: O(i), for entries near the head.
func (r *ring) removeAt(i int) *entry {
	n := len(r.buf)
	e := r.buf[(r.head+i)%n]
	for j := i; j > 0; j-- {
		r.buf[(r.head+j)%n] = r.buf[(r.head+j-1)%n]
	}
	r.buf[r.head] = nil
	r.head = (r.head + 1) % n
	r.size--
	return e
}

func (r *ring) pop() *entry {
	e := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return e
}

// remove deletes e, keeping the order of the rest: O(n), without
// allocating. Used when the IP set is reconciled and when one IP is taken
// or quarantined out of turn.
func (r *ring) remove(e *entry) {
	n := len(r.buf)
	for i := 0; i < r.size; i++ {
		if r.buf[(r.head+i)%n] != e {
			continue
		}
		for j := i; j < r.size-1; j++ {
			r.buf[(r.head+j)%n] = r.buf[(r.head+j+1)%n]
		}
		r.size--
		r.buf[(r.head+r.size)%n] = nil
		return
	}
}

// schedule is a min-heap of entries by time, ties broken by insertion order
// so that IPs that cool down together come back in the order they left.
type schedule struct {
	items []*entry
	seq   uint64
}

func (h *schedule) len() int { return len(h.items) }

func (h *schedule) peek() *entry { return h.items[0] }

func (h *schedule) less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	if !a.at.Equal(b.at) {
		return a.at.Before(b.at)
	}
	return a.seq < b.seq
}

func (h *schedule) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].index = i
	h.items[j].index = j
}

func (h *schedule) push(e *entry, at time.Time) {
	h.seq++
	e.at, e.seq, e.index = at, h.seq, len(h.items)
	h.items = append(h.items, e)
	h.up(e.index)
}

func (h *schedule) pop() *entry {
	return h.removeAt(0)
}

func (h *schedule) removeAt(i int) *entry {
	n := len(h.items) - 1
	e := h.items[i]
	if i != n {
		h.swap(i, n)
	}
	h.items[n] = nil
	h.items = h.items[:n]
	if i < n {
		h.down(i)
		h.up(i)
	}
	e.index = -1
	return e
}

func (h *schedule) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h *schedule) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h.swap(i, m)
		i = m
	}
}
