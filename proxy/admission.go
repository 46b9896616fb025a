package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// Admission is the boundary every client request and tunnel crosses before
// any IP is acquired: who sends it (auth), which target takes it (match),
// whether that client may use that target (ACL), whether the destination
// may be reached at all (server.denyDestinations), and whether the client
// has room for one more request or tunnel (per-client limits). Every entry
// point describes its request as an entry and calls admit; the steps each
// kind of entry takes, and their order, are listed in one table,
// admissionSteps.

// entryKind is how a request reached the agent.
type entryKind uint8

const (
	entryHTTP                   entryKind = iota // header mode and absolute-form requests
	entryTransparentHTTP                         // plain HTTP from a transparent client
	entryConnect                                 // CONNECT
	entryTransparentTunnel                       // TLS or opaque TCP from a transparent client
	entryIntercepted                             // a request inside an intercepted CONNECT
	entryInterceptedTransparent                  // a request inside an intercepted transparent TLS flow
)

// entry is a client request or tunnel at the boundary, as its entry point
// describes it to admission.
type entry struct {
	kind     entryKind
	cc       *clientConn
	req      *request // the request a refusal answers; nil for transparent tunnels
	matchKey string   // what target regexes see: the URL, or host:port for tunnels
	// host and port are the destination the destination policy checks
	// (host without brackets).
	host string
	port int
	// proxyForm: an absolute-form or CONNECT request, whose credential may
	// come in Proxy-Authorization and whose missing one is answered 407.
	proxyForm bool
	shown     string // the destination as a no-match answer names it
}

// admitted is a request admission let through.
type admitted struct {
	principal *auth.Principal // nil when auth is off or does not apply (transparent)
	target    *Target
	release   func() // gives back the per-client count; nil when not counted
}

// refusal is why admission stopped a request, and what an HTTP client is
// answered (see answer; transparent tunnels are reset or follow the
// unmatched policy instead).
type refusal struct {
	outcome string
	status  int
	target  string // the matched target, when matching came first
	// One of these says which step refused: auth or the target ACL, the
	// destination policy, the per-client limit ("requests" or "tunnels"
	// with its cap). None: no target matched.
	authErr     error
	destination string
	limit       string
	max         int
}

// check is one admission step; it fills a or refuses.
type check func(s *Server, e *entry, a *admitted) *refusal

// admissionSteps are the steps of each kind of entry, in order.
//
// The order differs between kinds where it did before admission was one
// step, so that no client sees a different answer: a transparent tunnel
// no target wants follows the unmatched policy before anything else is
// checked (it may go out directly), and its destination is checked before
// its source ACL. Transparent clients do not authenticate (the source ACL
// applies) and are not counted per client: they are the host's own
// processes, which share one address.
var admissionSteps = [...][]check{
	entryHTTP:              {(*Server).authenticate, (*Server).matchTarget, (*Server).allowTarget, (*Server).allowDestination, (*Server).requireTarget, (*Server).limitRequests},
	entryTransparentHTTP:   {(*Server).matchTarget, (*Server).allowTarget, (*Server).allowDestination, (*Server).requireTarget},
	entryConnect:           {(*Server).authenticate, (*Server).matchTarget, (*Server).allowTarget, (*Server).allowDestination, (*Server).requireTarget, (*Server).limitTunnels},
	entryTransparentTunnel: {(*Server).matchTarget, (*Server).requireTarget, (*Server).allowDestination, (*Server).allowTarget},
	// Requests inside an intercepted connection: its client authenticated
	// (or, transparent, was checked by its source) when the connection
	// was admitted; each request is matched, allowed and counted on its
	// own, as it may go to another target than the connection's.
	entryIntercepted:            {(*Server).connectionPrincipal, (*Server).matchIntercepted, (*Server).allowTarget, (*Server).allowDestination, (*Server).requireTarget, (*Server).limitRequests},
	entryInterceptedTransparent: {(*Server).matchIntercepted, (*Server).allowTarget, (*Server).allowDestination, (*Server).requireTarget},
}

// admit takes e through the admission steps of its kind. It returns the
// admitted request, whose release (if any) the caller must call when the
// request ends (recorder.admitted does), or the refusal, which the caller
// answers (answer) and records (recorder.refused).
func (s *Server) admit(e *entry) (*admitted, *refusal) {
	a := &admitted{}
	for _, step := range admissionSteps[e.kind] {
		if rf := step(s, e, a); rf != nil {
			if a.release != nil {
				a.release()
			}
			return nil, rf
		}
	}
	return a, nil
}

// authenticate resolves the client's credential when auth is on.
func (s *Server) authenticate(e *entry, a *admitted) *refusal {
	if !s.opts.Auth.Enabled() {
		return nil
	}
	p, err := s.opts.Auth.Authenticate(tokenOf(e.req.head, e.proxyForm))
	if err != nil {
		return &refusal{outcome: OutcomeAuthFailed, status: authStatus(err, e.proxyForm), authErr: err}
	}
	a.principal = p
	return nil
}

// connectionPrincipal gives a request of an intercepted connection the
// principal its CONNECT authenticated as.
func (s *Server) connectionPrincipal(e *entry, a *admitted) *refusal {
	a.principal = e.cc.icpt.principal
	return nil
}

// matchIntercepted matches a request of an intercepted connection by its
// URL, as any request; one that no target's regex matches goes to the
// target that took the connection (whose regex matched host:port, the
// form a CONNECT or a TLS flow is matched in, not the URL).
func (s *Server) matchIntercepted(e *entry, a *admitted) *refusal {
	if a.target = s.match(e.matchKey); a.target == nil {
		for _, t := range *s.targets.Load() {
			if t.Name == e.cc.icpt.target {
				a.target = t
				break
			}
		}
	}
	return nil
}

// matchTarget finds the target; a request none takes goes on to the steps
// that apply without one (requireTarget refuses it).
func (s *Server) matchTarget(e *entry, a *admitted) *refusal {
	a.target = s.match(e.matchKey)
	return nil
}

// allowTarget applies the target ACL: the principal's targets, or without
// one (transparent clients) the source address rules.
func (s *Server) allowTarget(e *entry, a *admitted) *refusal {
	if a.target == nil || !s.opts.Auth.Enabled() {
		return nil
	}
	var err error
	if a.principal != nil {
		err = a.principal.Allows(a.target.Name)
	} else {
		err = s.opts.Auth.AllowSource(remoteAddr(e.cc.c), a.target.Name)
	}
	if err != nil {
		return &refusal{outcome: OutcomeForbidden, status: http.StatusForbidden, target: a.target.Name, authErr: err}
	}
	return nil
}

// allowDestination applies the destination policy, whichever target
// matched (or none).
func (s *Server) allowDestination(e *entry, a *admitted) *refusal {
	reason := s.opts.Destinations.refuse(e.host, e.port)
	if reason == "" {
		return nil
	}
	rf := &refusal{outcome: OutcomeForbidden, status: http.StatusForbidden, destination: reason}
	if a.target != nil {
		rf.target = a.target.Name
	}
	return rf
}

// requireTarget refuses a request no target takes.
func (s *Server) requireTarget(e *entry, a *admitted) *refusal {
	if a.target == nil {
		return &refusal{outcome: OutcomeNoMatch, status: http.StatusBadGateway}
	}
	return nil
}

// limitRequests and limitTunnels count the request or tunnel against its
// client (limits.go).
func (s *Server) limitRequests(e *entry, a *admitted) *refusal {
	return s.limitClient(e, a, &s.inflight.requests, s.opts.MaxClientRequests, "requests")
}

func (s *Server) limitTunnels(e *entry, a *admitted) *refusal {
	return s.limitClient(e, a, &s.inflight.tunnels, s.opts.MaxClientTunnels, "tunnels")
}

// answer writes rf to a client that speaks HTTP (every entry but
// transparent tunnels) and reports whether its connection can carry
// another request: only a request no target takes keeps it, when keep
// says it could (no body left unread, client and server willing).
func (s *Server) answer(e *entry, rf *refusal, keep bool) bool {
	cc, head := e.cc, e.req.head
	switch {
	case rf.authErr != nil:
		s.refuseAuth(cc, head, e.proxyForm, rf.authErr)
	case rf.destination != "":
		s.deniedDestination(cc, head, false, rf.destination)
	case rf.limit != "":
		_ = writeJSONFields(cc.bw, http.StatusTooManyRequests, head.Minor, false, []Field{{Name: "Retry-After", Value: "1"}},
			map[string]any{"error": "client_" + rf.limit + "_limit",
				"detail": "This client has " + strconv.Itoa(rf.max) + " " + rf.limit + " in flight already, as many as it may"})
	default:
		_ = writeJSON(cc.bw, http.StatusBadGateway, head.Minor, keep,
			errorBody("no_target", "No target configured for URL: "+e.shown, e.req, nil, 0, 0, nil))
		return keep
	}
	return false
}

// match returns the first target that takes key (see Target.matches).
func (s *Server) match(key string) *Target {
	targets := *s.targets.Load()
	for _, t := range targets {
		if t.matches(key) {
			return t
		}
	}
	// proxy-hopper searched the whole URL, query included: say so when
	// that alone would have matched, so the change is never silent.
	if strings.Contains(key, "://") {
		for _, t := range targets {
			if t.Regex.MatchString(key) {
				s.reqLog.Log(context.Background(), slog.LevelWarn, "path_or_query_match",
					"no target matched: a target's regex matches this URL only through its path or query, which never selects a target (README: Differences from the Python proxy-hopper)",
					"target", t.Name)
				break
			}
		}
	}
	return nil
}
