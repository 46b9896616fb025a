package admin

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// CauseAdmin is the cause of a quarantine through the admin API.
const CauseAdmin = "admin"

// maxQuarantine bounds the seconds of a quarantine through the API.
const maxQuarantine = 366 * 24 * time.Hour

type quarantineRequest struct {
	// Seconds is how long; absent or 0 means the target's quarantineTime.
	Seconds float64 `json:"seconds"`
}

// POST /api/targets/{target}/ips/{ip}/quarantine {"seconds": N}
//
// An IP in use finishes its use first, then goes into quarantine (the
// answer says pending); the failure count is left alone.
func (s *Server) quarantine(w http.ResponseWriter, r *http.Request) {
	t, addr, ok := s.targetIP(w, r)
	if !ok {
		return
	}
	var req quarantineRequest
	if !readJSON(w, r, &req, true) {
		return
	}
	d := t.Pool.Config().QuarantineTime
	switch {
	case math.IsNaN(req.Seconds) || req.Seconds < 0:
		writeError(w, http.StatusBadRequest, "bad_seconds", "seconds must be a positive number")
		return
	case req.Seconds > maxQuarantine.Seconds():
		writeError(w, http.StatusBadRequest, "bad_seconds", fmt.Sprintf("seconds must be at most %.0f (366 days)", maxQuarantine.Seconds()))
		return
	case req.Seconds > 0:
		d = time.Duration(req.Seconds * float64(time.Second))
	}
	if d <= 0 {
		writeError(w, http.StatusBadRequest, "bad_seconds", fmt.Sprintf("target %q has quarantineTime 0: give seconds", t.Name))
		return
	}
	until := s.opts.Now().Add(d)
	if err := t.Pool.Quarantine(pool.WithCause(r.Context(), CauseAdmin), addr, until); err != nil {
		s.controlError(w, t.Name, addr, err)
		return
	}
	s.log.Info("ip quarantined through the admin API", "target", t.Name, "address", addr, "until", until)
	st, err := t.Pool.State(r.Context(), addr)
	pending := err == nil && st.State == pool.StateInUse
	writeJSON(w, http.StatusOK, map[string]any{
		"target": t.Name, "address": addr, "quarantined": true, "releaseAt": until.UTC(), "pending": pending,
	})
}

// POST /api/targets/{target}/ips/{ip}/release: a quarantined IP is back
// at once with its failure count reset; 409 for an IP not in quarantine.
func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	t, addr, ok := s.targetIP(w, r)
	if !ok {
		return
	}
	if !readJSON(w, r, &struct{}{}, true) {
		return
	}
	if err := t.Pool.ReleaseQuarantine(r.Context(), addr); err != nil {
		s.controlError(w, t.Name, addr, err)
		return
	}
	s.log.Info("ip released through the admin API", "target", t.Name, "address", addr)
	writeJSON(w, http.StatusOK, map[string]any{"target": t.Name, "address": addr, "released": true})
}

// targetIP resolves {target} and {ip}, answering 404/400 itself.
func (s *Server) targetIP(w http.ResponseWriter, r *http.Request) (*proxy.Target, string, bool) {
	t, ok := s.lookupTarget(w, r)
	if !ok {
		return nil, "", false
	}
	addr, ok := pathIP(w, r)
	if !ok {
		return nil, "", false
	}
	return t, addr, true
}

func (s *Server) controlError(w http.ResponseWriter, target, addr string, err error) {
	switch {
	case errors.Is(err, pool.ErrUnknownIP):
		writeError(w, http.StatusNotFound, "unknown_ip", fmt.Sprintf("target %q has no IP %s", target, addr))
	case errors.Is(err, pool.ErrNotQuarantined):
		writeError(w, http.StatusConflict, "not_quarantined", fmt.Sprintf("IP %s of target %q is not quarantined", addr, target))
	case errors.Is(err, pool.ErrBackendUnavailable):
		writeError(w, http.StatusServiceUnavailable, "backend_unavailable", err.Error())
	case errors.Is(err, pool.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "shutting_down", "the agent is shutting down")
	default:
		s.log.Error("pool control", "target", target, "address", addr, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}
