package proxy

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/identity"
)

// identityFields builds the header fields of one attempt through an IP
// with an identity: the client's fields without hop-by-hop and control
// headers (and without its User-Agent when spoof is set), merged by the
// identity (its headers, in its browser's order, and its cookies), then
// the X-Proxy-Hopper-<Name> overrides, which win and keep the place of the
// field they replace.
func identityFields(req *request, id *identity.Session, spoof bool) Fields {
	h := req.head
	conn := tokens(h.Fields.Values("Connection"))
	client := make([]identity.Header, 0, len(h.Fields))
	for _, f := range h.Fields {
		if !isHop(f.Name, conn) && !(spoof && strings.EqualFold(f.Name, "User-Agent")) {
			client = append(client, identity.Header(f))
		}
	}
	merged := id.Apply(client, req.url)
	out := make(Fields, 0, len(merged)+len(req.overrides)+1)
	for _, f := range merged {
		out = append(out, Field(f))
	}
	if spoof && !out.Has("User-Agent") {
		// Only when the identity sends none (its policy was just turned off).
		out = append(out, Field{Name: "User-Agent", Value: randomUserAgent()})
	}
	for _, o := range req.overrides {
		replaced := false
		kept := out[:0]
		for _, f := range out {
			if strings.EqualFold(f.Name, o.Name) {
				if replaced {
					continue
				}
				f, replaced = o, true
			}
			kept = append(kept, f)
		}
		out = kept
		if !replaced {
			out = append(out, o)
		}
	}
	return out
}

// warmup sends, once per fresh identity session, a GET of the configured warm-up
// path on the request's host through the same IP, so that the identity
// collects the cookies a browser would have before its real request. Its
// failure is not the request's: the next request through the IP tries again.
func (s *Server) warmup(ctx context.Context, t *Target, up Upstream, id *identity.Session, u *url.URL) {
	wu, ok := id.WarmupURL(u)
	if !ok {
		return
	}
	wreq := &request{head: &RequestHead{Method: http.MethodGet, Target: wu.RequestURI(), Proto: "HTTP/1.1", Minor: 1}, url: wu, retries: 0}
	wreq.fields = identityFields(wreq, id, t.SpoofUserAgent)
	resp, uc, err := t.tr.roundTrip(ctx, up, wreq, &requestBody{})
	if err != nil {
		s.log.Debug("identity warm-up failed", "target", t.Name, "address", up.Addr, "err", err)
		return
	}
	n, cerr := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20+1))
	resp.Body.Close()
	if cerr == nil && n <= 1<<20 && !resp.Close {
		t.tr.put(uc)
	} else {
		uc.Close()
	}
	id.Learn(wu, resp.Header)
	id.MarkWarmedUp()
	if t.Identity.OnResponse(up.Addr, resp.StatusCode) {
		s.log.Debug("identity rotated by its warm-up", "target", t.Name, "address", up.Addr, "status", resp.StatusCode)
	}
}

// browserUserAgents are the User-Agents of the built-in browser profiles,
// read once; never modified.
var browserUserAgents = func() []string {
	var uas []string
	for _, p := range identity.Profiles() {
		if ua := p.UserAgent(); ua != "" {
			uas = append(uas, ua)
		}
	}
	return uas
}()

// randomUserAgent returns a random built-in profile's User-Agent, as
// proxy-hopper picks a random profile's for each request without an
// identity.
func randomUserAgent() string {
	return browserUserAgents[rand.IntN(len(browserUserAgents))]
}

// spoofedUserAgent is the User-Agent replacing the client's in an attempt
// through t without an identity: a random browser's when t spoofs and the
// client sent no X-Proxy-Hopper-User-Agent override (which wins); "" keeps
// the client's.
func (t *Target) spoofedUserAgent(req *request) string {
	if !t.SpoofUserAgent || req.overrides.Has("User-Agent") {
		return ""
	}
	return randomUserAgent()
}

// principalKey names an authenticated principal for its cookie jars: kind
// and name (API key name, JWT subject), so that a key and a JWT subject of
// the same name never share a jar.
func principalKey(p *auth.Principal) string {
	if p == nil {
		return ""
	}
	return p.Kind + ":" + p.Name
}
