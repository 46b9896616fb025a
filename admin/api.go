package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// States lists the pool states in the order the page draws them.
var States = []pool.State{pool.StateAvailable, pool.StateInUse, pool.StateCooling, pool.StateQuarantined}

// TargetView is one target as GET /api/targets shows it.
type TargetView struct {
	Name string `json:"name"`
	// QuarantineSeconds is the target's quarantineTime, the default
	// length of a quarantine through the API.
	QuarantineSeconds float64 `json:"quarantineSeconds"`
	// Counts has the number of IPs in each state.
	Counts map[pool.State]int `json:"counts"`
	IPs    []IPView           `json:"ips"`
	// Matched is the number of IPs the filter (state, q) matched; IPs
	// holds those from Offset on, at most the limit. Without a filter
	// and limit, Matched is every IP and IPs has them all.
	Matched int `json:"matched"`
	Offset  int `json:"offset"`
	// Traffic is the target's client requests over the last minute.
	Traffic TargetTraffic `json:"traffic"`
	// Error says why the pool could not be read (IPs is then empty).
	Error string `json:"error,omitempty"`
}

// IPView is one IP of a target.
type IPView struct {
	Address string     `json:"address"` // host:port, never with credentials
	State   pool.State `json:"state"`   // available, in-use, cooling, quarantined
	// ReleaseAt (quarantined), ReadyAt (cooling), InUseSince (in-use).
	ReleaseAt  time.Time `json:"releaseAt,omitzero"`
	ReadyAt    time.Time `json:"readyAt,omitzero"`
	InUseSince time.Time `json:"inUseSince,omitzero"`
	// ConsecutiveFailures counts towards the target's quarantine threshold.
	ConsecutiveFailures int `json:"consecutiveFailures"`
	// Requests are the attempts this agent sent through the IP since it
	// started; FailedRequests those that counted against it.
	Requests       uint64 `json:"requests"`
	FailedRequests uint64 `json:"failedRequests"`
	Provider       string `json:"provider"`
	Region         string `json:"region"`
	// QuarantinePendingUntil is set on an IP quarantined while in use: it
	// goes into quarantine until then when its use ends.
	QuarantinePendingUntil time.Time `json:"quarantinePendingUntil,omitzero"`
	// Draining: removed from the target, finishing the use in flight.
	Draining bool       `json:"draining"`
	Probe    *ProbeView `json:"probe"` // null until the prober has probed it
	// QuarantineReason says why this agent last quarantined the IP
	// (Event.Reason); QuarantinedAt when. Set while it is quarantined.
	QuarantineReason string    `json:"quarantineReason,omitempty"`
	QuarantinedAt    time.Time `json:"quarantinedAt,omitzero"`
	// ReasonText describes QuarantineReason for people (quarantined only).
	ReasonText string `json:"reasonText,omitempty"`
	// Bytes are the gateway's BPF byte counters of the IP's address
	// (null when gateway mode is off or it saw no packet of it).
	Bytes *ByteCounts `json:"bytes"`
}

// ByteCounts are the bytes the gateway's BPF counters saw to (Out) and
// from (In) one upstream IP address since they were loaded.
type ByteCounts struct {
	In  uint64 `json:"in"`
	Out uint64 `json:"out"`
}

// ProbeView is the last probe of an IP.
type ProbeView struct {
	OK        bool      `json:"ok"`
	Result    string    `json:"result"` // ok, or the failure reason
	LatencyMs float64   `json:"latencyMs"`
	At        time.Time `json:"at"`
}

// StatusView is everything the page draws, in one answer.
type StatusView struct {
	GeneratedAt time.Time `json:"generatedAt"`
	Backend     string    `json:"backend"`
	// Version of the agent; StartedAt and UptimeSeconds of its process.
	Version       string    `json:"version"`
	StartedAt     time.Time `json:"startedAt"`
	UptimeSeconds int64     `json:"uptimeSeconds"`
	// Gateway says whether BPF byte counters are shown (gateway mode on);
	// BytesError why they could not be read, if so.
	Gateway    bool         `json:"gateway"`
	BytesError string       `json:"bytesError,omitempty"`
	Targets    []TargetView `json:"targets"`
	Events     []Event      `json:"events"`
	Traffic    Traffic      `json:"traffic"`
}

func (s *Server) target(name string) *proxy.Target {
	for _, t := range s.opts.Targets() {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// MaxIPFilter bounds the q filter, in bytes.
const MaxIPFilter = 100

// ipFilter picks the IPs a view lists: by state, by a substring of the
// address, provider or region, then a window (offset, limit; limit 0:
// all).
type ipFilter struct {
	state         pool.State
	q             string
	offset, limit int
}

// parseFilter reads state, q, offset and limit from the query; limit
// defaults to def (0: all).
func parseFilter(q url.Values, def int) (ipFilter, error) {
	f := ipFilter{state: pool.State(q.Get("state")), q: q.Get("q"), limit: def}
	if f.state != "" && !slices.Contains(States, f.state) {
		return f, fmt.Errorf("state %q: want one of available, in-use, cooling, quarantined", truncate(string(f.state), 40))
	}
	if len(f.q) > MaxIPFilter {
		return f, fmt.Errorf("q is longer than %d bytes", MaxIPFilter)
	}
	for _, p := range []struct {
		name string
		v    *int
	}{{"offset", &f.offset}, {"limit", &f.limit}} {
		if raw := q.Get(p.name); raw != "" {
			n, err := strconv.Atoi(raw)
			if err != nil || n < 0 || n > 1_000_000 {
				return f, fmt.Errorf("%s must be a number from 0 to 1000000", p.name)
			}
			*p.v = n
		}
	}
	return f, nil
}

func (f ipFilter) match(addr string, state pool.State, provider, region string) bool {
	if f.state != "" && state != f.state {
		return false
	}
	return f.q == "" || strings.Contains(addr, f.q) || strings.Contains(provider, f.q) || strings.Contains(region, f.q)
}

// byteSnapshot reads the gateway's counters once per answer.
func (s *Server) byteSnapshot() (map[netip.Addr]ByteCounts, string) {
	if s.opts.Bytes == nil {
		return nil, ""
	}
	m, err := s.opts.Bytes()
	if err != nil {
		return nil, truncate(err.Error(), 200)
	}
	return m, ""
}

// viewOf reads target t's pool, joins what the agent knows of each IP,
// and lists the IPs f picks.
func (s *Server) viewOf(ctx context.Context, t *proxy.Target, f ipFilter, bytes map[netip.Addr]ByteCounts) TargetView {
	cfg := t.Pool.Config()
	v := TargetView{Name: t.Name, QuarantineSeconds: cfg.QuarantineTime.Seconds(), Counts: map[pool.State]int{}, IPs: []IPView{},
		Traffic: s.opts.Recorder.Target(t.Name), Offset: f.offset}
	for _, st := range States {
		v.Counts[st] = 0
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.CheckTimeout)
	defer cancel()
	snap, err := t.Pool.Snapshot(ctx)
	if err != nil {
		v.Error = fmt.Sprintf("read pool: %v", err)
		return v
	}
	var member map[string]bool
	if s.opts.IPs != nil {
		if list, ok := s.opts.IPs.IPs(t.Name); ok {
			member = make(map[string]bool, len(list))
			for _, a := range list {
				member[a] = true
			}
		}
	}
	// The filter and the window are applied before the views are built,
	// so a page of a large pool costs its page, not the pool.
	type pick struct {
		st   pool.IPState
		addr string // public
	}
	picked := make([]pick, 0, len(snap))
	for _, st := range snap {
		v.Counts[st.State]++
		up := t.Upstreams[st.Addr]
		addr := PublicAddr(st.Addr)
		if f.match(addr, st.State, up.Provider, up.Region) {
			picked = append(picked, pick{st, addr})
		}
	}
	v.Matched = len(picked)
	slices.SortFunc(picked, func(a, b pick) int { return strings.Compare(a.addr, b.addr) })
	lo := min(f.offset, len(picked))
	hi := len(picked)
	if f.limit > 0 {
		hi = min(hi, lo+f.limit)
	}
	v.IPs = make([]IPView, 0, hi-lo)
	for _, pk := range picked[lo:hi] {
		st := pk.st
		up := t.Upstreams[st.Addr]
		c := s.opts.Recorder.IP(t.Name, st.Addr)
		ip := IPView{
			Address: pk.addr, State: st.State, ConsecutiveFailures: st.Failures,
			Requests: c.Requests, FailedRequests: c.Failed, Provider: up.Provider, Region: up.Region,
			Draining: member != nil && !member[st.Addr], QuarantinePendingUntil: st.PendingQuarantine,
		}
		switch st.State {
		case pool.StateQuarantined:
			ip.ReleaseAt = st.Until
			ip.QuarantineReason, ip.QuarantinedAt = c.QuarantineReason, c.QuarantinedAt
			ip.ReasonText = reasonText(c.QuarantineReason)
		case pool.StateCooling:
			ip.ReadyAt = st.Until
		case pool.StateInUse:
			ip.InUseSince = st.Until
		}
		if s.opts.Probes != nil {
			if r, ok := s.opts.Probes.ProbeStatus(st.Addr); ok {
				res := "ok"
				if !r.OK {
					res = r.Reason
					if res == "" {
						res = "failed"
					}
				}
				ip.Probe = &ProbeView{OK: r.OK, Result: res, LatencyMs: float64(r.Latency.Microseconds()) / 1000, At: r.At}
			}
		}
		if bytes != nil {
			if a, ok := hostAddr(st.Addr); ok {
				if b, ok := bytes[a]; ok {
					ip.Bytes = &b
				}
			}
		}
		v.IPs = append(v.IPs, ip)
	}
	return v
}

// hostAddr is the IP address of a host:port upstream (false for a name).
func hostAddr(addr string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(PublicAddr(addr))
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func (s *Server) views(ctx context.Context, f ipFilter, bytes map[netip.Addr]ByteCounts) []TargetView {
	ts := s.opts.Targets()
	out := make([]TargetView, 0, len(ts))
	for _, t := range ts {
		out = append(out, s.viewOf(ctx, t, f, bytes))
	}
	return out
}

func (s *Server) status(ctx context.Context, f ipFilter) StatusView {
	now := s.opts.Now()
	bytes, bytesErr := s.byteSnapshot()
	return StatusView{
		GeneratedAt:   now.UTC(),
		Backend:       s.opts.BackendName,
		Version:       s.opts.Version,
		StartedAt:     s.opts.Started.UTC(),
		UptimeSeconds: int64(now.Sub(s.opts.Started).Seconds()),
		Gateway:       s.opts.Bytes != nil,
		BytesError:    bytesErr,
		Targets:       s.views(ctx, f, bytes),
		Events:        s.opts.Recorder.Events(),
		Traffic:       s.opts.Recorder.Traffic(),
	}
}

// GET /api/status: targets, events and traffic (what the page draws).
// state, q, offset and limit pick the IPs listed per target (every IP
// without them).
func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query(), 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_filter", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s.status(r.Context(), f))
}

// GET /api/targets (state, q, offset, limit as /api/status)
func (s *Server) getTargets(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query(), 0)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_filter", err.Error())
		return
	}
	bytes, _ := s.byteSnapshot()
	writeJSON(w, http.StatusOK, map[string]any{"targets": s.views(r.Context(), f, bytes)})
}

// GET /api/targets/{target}
func (s *Server) getTarget(w http.ResponseWriter, r *http.Request) {
	t, ok := s.lookupTarget(w, r)
	if !ok {
		return
	}
	bytes, _ := s.byteSnapshot()
	writeJSON(w, http.StatusOK, s.viewOf(r.Context(), t, ipFilter{}, bytes))
}

// GET /api/events: quarantine events, newest first.
func (s *Server) getEvents(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"events": s.opts.Recorder.Events()})
}

func (s *Server) lookupTarget(w http.ResponseWriter, r *http.Request) (*proxy.Target, bool) {
	name := r.PathValue("target")
	t := s.target(name)
	if t == nil {
		writeError(w, http.StatusNotFound, "unknown_target", fmt.Sprintf("target %q does not exist", name))
		return nil, false
	}
	return t, true
}

// pathIP parses the {ip} of the path; it answers 400 when it is not host:port.
func pathIP(w http.ResponseWriter, r *http.Request) (string, bool) {
	addr, err := ParseAddr(r.PathValue("ip"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_address", err.Error())
		return "", false
	}
	return addr, true
}

type addIPRequest struct {
	Address string `json:"address"`
}

// POST /api/targets/{target}/ips {"address": "host:port"}
func (s *Server) addIP(w http.ResponseWriter, r *http.Request) {
	if s.opts.IPs == nil {
		writeError(w, http.StatusNotImplemented, "not_configured", "this agent cannot change IP lists")
		return
	}
	t, ok := s.lookupTarget(w, r)
	if !ok {
		return
	}
	var req addIPRequest
	if !readJSON(w, r, &req, false) {
		return
	}
	addr, err := ParseAddr(req.Address)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_address", "address: "+err.Error())
		return
	}
	if err := s.opts.IPs.AddIP(r.Context(), t.Name, addr); err != nil {
		s.editError(w, t.Name, addr, err)
		return
	}
	s.log.Info("ip added", "target", t.Name, "address", addr)
	writeJSON(w, http.StatusCreated, map[string]any{"target": t.Name, "address": addr, "added": true})
}

// DELETE /api/targets/{target}/ips/{ip}
func (s *Server) removeIP(w http.ResponseWriter, r *http.Request) {
	if s.opts.IPs == nil {
		writeError(w, http.StatusNotImplemented, "not_configured", "this agent cannot change IP lists")
		return
	}
	t, ok := s.lookupTarget(w, r)
	if !ok {
		return
	}
	addr, ok := pathIP(w, r)
	if !ok {
		return
	}
	if err := s.opts.IPs.RemoveIP(r.Context(), t.Name, addr); err != nil {
		s.editError(w, t.Name, addr, err)
		return
	}
	s.log.Info("ip removed", "target", t.Name, "address", addr)
	writeJSON(w, http.StatusOK, map[string]any{"target": t.Name, "address": addr, "removed": true})
}

func (s *Server) editError(w http.ResponseWriter, target, addr string, err error) {
	switch {
	case errors.Is(err, ErrUnknownTarget):
		writeError(w, http.StatusNotFound, "unknown_target", fmt.Sprintf("target %q does not exist", target))
	case errors.Is(err, ErrUnknownIP):
		writeError(w, http.StatusNotFound, "unknown_ip", fmt.Sprintf("target %q has no IP %s", target, addr))
	case errors.Is(err, ErrIPExists):
		writeError(w, http.StatusConflict, "ip_exists", fmt.Sprintf("target %q already has IP %s", target, addr))
	case errors.Is(err, pool.ErrBackendUnavailable):
		writeError(w, http.StatusServiceUnavailable, "backend_unavailable", err.Error())
	case errors.Is(err, pool.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "shutting_down", "the agent is shutting down")
	default:
		s.log.Error("change IPs", "target", target, "address", addr, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

// ParseAddr checks an upstream address given to the API and returns it
// as the pool keys it (host:port, IPv6 in brackets). Credentials are
// refused: upstream credentials only come from the config file.
func ParseAddr(raw string) (string, error) {
	switch {
	case raw == "":
		return "", errors.New("empty address (want host:port)")
	case strings.Contains(raw, "://"):
		return "", fmt.Errorf("%q is a URL; want host:port", raw)
	case strings.Contains(raw, "@"):
		return "", errors.New("address must not carry credentials (user:pass@); upstream credentials come from the config file")
	case len(raw) > 300:
		return "", errors.New("address is too long")
	}
	host, port, err := net.SplitHostPort(raw)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port", raw)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port must be a number from 1 to 65535", raw)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", fmt.Errorf("%q: IPv6 zones are not supported", raw)
		}
		host = a.Unmap().String()
	} else if host == "" || len(host) > 253 || strings.ContainsFunc(host, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) {
		return "", fmt.Errorf("%q: host is neither an IP address nor a host name", raw)
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}

// readJSON decodes a small JSON body strictly; an empty body is allowed
// when optional. It answers 400 itself and returns false on bad input.
func readJSON(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", "request body: "+err.Error())
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		if optional {
			return true
		}
		writeError(w, http.StatusBadRequest, "bad_json", "request body is empty; want a JSON object")
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad_json", "request body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad_json", "request body: more than one JSON value")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeError answers {"error": code, "message": msg}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": code, "message": msg})
}

// GET /api/v1/status: proxy-hopper's status answer (read permission):
// the targets with their regex and IP count, the backend, whether auth is
// on, and the caller.
func (s *Server) v1Status(w http.ResponseWriter, r *http.Request) {
	type target struct {
		Name    string `json:"name"`
		Regex   string `json:"regex"`
		IPCount int    `json:"ip_count"`
	}
	targets := []target{}
	for _, t := range s.opts.Targets() {
		re := ""
		if t.Regex != nil {
			re = t.Regex.String()
		}
		n := len(t.Upstreams)
		if snap, err := t.Pool.Snapshot(r.Context()); err == nil {
			n = len(snap)
		}
		targets = append(targets, target{Name: t.Name, Regex: re, IPCount: n})
	}
	user := map[string]string{"sub": "anonymous", "role": "viewer"}
	switch a := accessFrom(r.Context()); {
	case a.p != nil:
		user = map[string]string{"sub": a.p.Name, "role": a.p.Role}
	case a.all && !a.readOnly:
		user = map[string]string{"sub": "admin-token", "role": "admin"}
	}
	writeJSON(w, http.StatusOK, map[string]any{"targets": targets, "backend": s.opts.BackendName, "auth_enabled": s.opts.AuthEnabled, "user": user})
}

// State, Q, Offset and Limit expose the filter to the page's template.
func (f ipFilter) State() pool.State { return f.state }

// Q is the filter's substring.
func (f ipFilter) Q() string { return f.q }

// Offset is the index of the first IP listed.
func (f ipFilter) Offset() int { return f.offset }

// Limit is the most IPs listed per target (0: all).
func (f ipFilter) Limit() int { return f.limit }
