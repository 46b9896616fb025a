package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// request is a client request after its listener-specific parsing: from
// here on header, explicit and transparent requests share one path.
type request struct {
	head     *RequestHead
	url      *url.URL // where it goes
	matchKey string   // what target regexes see
	mode     string
	tag      string
	retries  int // -1: the target's numRetries
	// principal names who sends the request, for per-principal cookie
	// jars: "" when auth is off or does not apply (transparent).
	principal string
	// overrides are X-Proxy-Hopper-<Name> headers: sent as <Name>, replacing
	// the client's own <Name>.
	overrides Fields
	// fields, when set, are the exact header fields of this attempt (an
	// identity's headers and cookies merged in); nil means the client's
	// fields filtered, plus overrides.
	fields Fields
	// userAgent, when set (and fields nil), replaces the client's
	// User-Agent in this attempt: spoofUserAgent without an identity.
	userAgent string
}

// handle routes one request head by its form and reports whether the
// connection can carry another request.
func (s *Server) handle(cc *clientConn, head *RequestHead) bool {
	keep := clientKeepAlive(head)
	bad := func(reason string) bool {
		_ = writeJSON(cc.bw, 400, head.Minor, false, clientError(reason))
		return false
	}
	if head.Method == "CONNECT" {
		s.serveConnect(cc, head)
		return false
	}
	overrides, err := overridesOf(head.Fields)
	if err != nil {
		return bad(err.Error())
	}
	req := &request{head: head, retries: retriesOf(head), tag: tagOf(head), overrides: overrides}
	switch t := head.Target; {
	case hasSchemePrefix(t):
		u, err := url.ParseRequestURI(t)
		if err != nil {
			return bad("invalid absolute request target")
		}
		u.Scheme = strings.ToLower(u.Scheme)
		if u.Scheme != "http" && u.Scheme != "https" {
			return bad("proxy requests must be http:// or https://")
		}
		if u.User != nil {
			return bad("request target must not carry credentials")
		}
		if err := checkHostPort(u); err != nil {
			return bad(err.Error())
		}
		req.url, req.mode = u, "proxy"
	case strings.HasPrefix(t, "/"):
		tv := head.Fields.Values(HeaderTarget)
		if len(tv) == 0 {
			return bad("missing " + HeaderTarget + " header (or send an absolute-form proxy request)")
		}
		if len(tv) > 1 {
			return bad("more than one " + HeaderTarget + " header")
		}
		base := cc.lastBase
		if base == nil || cc.lastTarget != tv[0] {
			var err error
			if base, err = ParseTargetHeader(tv[0]); err != nil {
				return bad("invalid " + HeaderTarget + ": " + err.Error())
			}
			cc.lastTarget, cc.lastBase = tv[0], base
		}
		u, err := joinTarget(base, t)
		if err != nil {
			return bad(err.Error())
		}
		req.url, req.mode = u, "header"
	default:
		return bad("unsupported request target form")
	}
	return s.serveRequest(cc, req, keep)
}

// retriesOf reads X-Proxy-Hopper-Retries; -1 means the target's default.
func retriesOf(h *RequestHead) int {
	if v := h.Fields.Get(HeaderRetries); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 100 {
			return n
		}
	}
	return -1
}

func hasSchemePrefix(t string) bool {
	i := strings.Index(t, "://")
	return i > 0 && !strings.Contains(t[:i], "/")
}

// MaxTagLen bounds X-Proxy-Hopper-Tag, which becomes a metric label:
// longer tags are cut to their first 64 characters, as proxy-hopper does.
const MaxTagLen = 64

func tagOf(h *RequestHead) string {
	return CleanTag(h.Fields.Get(HeaderTag))
}

// CleanTag makes a client's tag a safe label value: valid UTF-8 (a run of
// invalid bytes becomes U+FFFD), cut to its first MaxTagLen characters.
func CleanTag(tag string) string {
	if len(tag) <= MaxTagLen && utf8.ValidString(tag) {
		return tag
	}
	// MaxTagLen characters take at most 4 bytes each: the rest is cut
	// unread (a tag with invalid bytes may then keep fewer characters).
	tag = strings.ToValidUTF8(truncate(tag, 4*MaxTagLen), "\uFFFD")
	n := 0
	for i := range tag {
		if n == MaxTagLen {
			return tag[:i]
		}
		n++
	}
	return tag
}

// controlHeaders are the X-Proxy-Hopper-* names with a meaning of their own;
// any other X-Proxy-Hopper-<Name> overrides the upstream header <Name>.
var controlHeaders = []string{"Target", "Retries", "Tag", "Auth"}

// MaxUserAgentLen bounds an X-Proxy-Hopper-User-Agent value, in bytes:
// browsers send under 300, and a longer one is refused with 400 rather than
// sent cut. (Control characters never get this far: the head parser
// refuses them in every field.)
const MaxUserAgentLen = 1024

// overridesOf collects X-Proxy-Hopper-<Name> override headers, as
// proxy-hopper does. Names that would change framing or routing are ignored.
// A User-Agent override must come once and be at most MaxUserAgentLen
// bytes; the error says what is wrong, for a 400.
func overridesOf(f Fields) (Fields, error) {
	var out Fields
	for _, h := range f {
		if len(h.Name) <= 15 || !strings.EqualFold(h.Name[:15], "X-Proxy-Hopper-") {
			continue
		}
		name := h.Name[15:]
		if slices.ContainsFunc(controlHeaders, func(c string) bool { return strings.EqualFold(c, name) }) ||
			isHop(name, nil) || strings.HasPrefix(strings.ToLower(name), "x-proxy-hopper-") {
			continue
		}
		if strings.EqualFold(name, "User-Agent") {
			if out.Has(name) {
				return nil, errors.New("more than one " + HeaderUserAgent + " header")
			}
			if len(h.Value) > MaxUserAgentLen {
				return nil, fmt.Errorf("%s is longer than %d bytes", HeaderUserAgent, MaxUserAgentLen)
			}
		}
		out = append(out, Field{Name: name, Value: h.Value})
	}
	return out, nil
}

// serveRequest is the one request path shared by every client mode: frame
// the body, admit (admission.go), read what of the body can be replayed,
// forward with retries (retry.go) and answer the client, then record the
// request (events.go). It reports whether the client connection can carry
// another request.
func (s *Server) serveRequest(cc *clientConn, req *request, keep bool) bool {
	head := req.head
	req.matchKey = req.url.String()
	rec := s.record(req.mode, req.tag, "request", func(ev *RequestEvent) []any {
		return []any{"mode", req.mode, "method", head.Method, "url", redactURL(req.url), "target", ev.Target,
			"tag", req.tag, "status", ev.Status, "outcome", ev.Outcome, "retries", ev.Retries, "duration", ev.Duration,
			"client", cc.c.RemoteAddr().String()}
	})
	keep = keep && !s.draining.Load()
	framing, size, err := RequestFraming(head.Fields)
	if err != nil {
		he := err.(*HeadError)
		_ = writeJSON(cc.bw, he.Status, head.Minor, false, clientError(he.Reason))
		rec.finish(OutcomeBadRequest, he.Status)
		return false
	}
	if framing == Sized && size > s.opts.MaxBodyBytes {
		_ = writeJSON(cc.bw, 413, head.Minor, false, clientError(errBodyTooLarge.Reason))
		rec.finish(OutcomeBadRequest, 413)
		return false
	}

	e := requestEntry(cc, req)
	a, rf := s.admit(e)
	if rf != nil {
		keep = s.answer(e, rf, keep && framing == NoBody)
		rec.refused(rf, rf.status)
		return keep
	}
	rec.admitted(a)
	req.principal = principalKey(a.principal)

	body, src, err := s.readBody(cc, head, framing, size)
	if errors.Is(err, errContinue) {
		rec.abandon()
		return false
	}
	if err != nil {
		status, reason := bodyErrorStatus(err)
		_ = writeJSON(cc.bw, status, head.Minor, false, clientError(reason))
		rec.finish(OutcomeBadRequest, status)
		return false
	}
	keep, outcome, status := s.forward(cc, req, a.target, body, keep, &rec.ev)
	if src != nil {
		rec.ev.BytesUp = src.n
		if !src.eof {
			keep = false // unread body bytes: the connection is out of sync
		}
	}
	rec.finish(outcome, status)
	return keep
}

// errContinue is a failure to send 100 Continue: the client is gone.
var errContinue = errors.New("send 100 continue")

// readBody prepares the request body for forwarding: it answers a client
// waiting for 100 Continue, then reads up to RetryBufferBytes so that the
// body can be replayed on retry (prepareBody). src counts the client's
// body bytes and says whether they were all read (nil without a body).
func (s *Server) readBody(cc *clientConn, head *RequestHead, framing Framing, size int64) (body *requestBody, src *eofReader, err error) {
	if framing == NoBody {
		return &requestBody{size: 0}, nil, nil
	}
	if head.Minor == 1 && hasToken(head.Fields.Values("Expect"), "100-continue") {
		cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		if err := cc.bw.Flush(); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errContinue, err)
		}
	}
	var r io.Reader
	if framing == Sized {
		r = &sizedBody{r: cc.br, n: size}
	} else {
		r = &limitedBody{r: newChunkedBody(cc.br), max: s.opts.MaxBodyBytes}
	}
	src = &eofReader{r: &deadlineReader{r: r, c: cc.c, d: s.opts.BodyReadTimeout}}
	body, err = prepareBody(src, size, s.opts.RetryBufferBytes)
	return body, src, err
}

// requestEntry describes req (its URL and matchKey set) to admission:
// its kind follows how it reached the agent.
func requestEntry(cc *clientConn, req *request) *entry {
	e := &entry{kind: entryHTTP, cc: cc, req: req, matchKey: req.matchKey, host: req.url.Hostname(),
		port: urlPort(req.url, req.url.Scheme), proxyForm: req.mode == "proxy", shown: redactURL(req.url)}
	switch {
	case req.mode == "transparent":
		e.kind = entryTransparentHTTP
	case cc.icpt != nil && cc.icpt.mode == "connect":
		e.kind, e.proxyForm = entryIntercepted, false
	case cc.icpt != nil:
		e.kind = entryInterceptedTransparent
	}
	return e
}
