package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/identity"
)

// identityFields builds the header fields of one attempt through an IP
// with an identity: the client's fields without hop-by-hop and control
// headers, merged by the identity (its headers, in its browser's order,
// and its cookies), then the X-Proxy-Hopper-<Name> overrides, which win
// and keep the place of the field they replace.
func identityFields(req *request, id *identity.Session) Fields {
	h := req.head
	conn := tokens(h.Fields.Values("Connection"))
	client := make([]identity.Header, 0, len(h.Fields))
	for _, f := range h.Fields {
		if !isHop(f.Name, conn) {
			client = append(client, identity.Header(f))
		}
	}
	merged := id.Apply(client, req.url)
	out := make(Fields, 0, len(merged)+len(req.overrides))
	for _, f := range merged {
		out = append(out, Field(f))
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
	wreq.fields = identityFields(wreq, id)
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

// principalKey names an authenticated principal for its cookie jars: kind
// and name (API key name, JWT subject), so that a key and a JWT subject of
// the same name never share a jar.
func principalKey(p *auth.Principal) string {
	if p == nil {
		return ""
	}
	return p.Kind + ":" + p.Name
}
