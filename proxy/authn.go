package proxy

import (
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// HeaderAuth carries `Bearer <key or JWT>`.
const HeaderAuth = "X-Proxy-Hopper-Auth"

// tokenOf extracts the client's credential: X-Proxy-Hopper-Auth: Bearer
// <token> (the scheme in any case, RFC 7235), or for proxy-form requests (absolute-form, CONNECT) also
// Proxy-Authorization: Basic with the key as the password (any user name),
// so that curl -U and http://user:key@agent URLs work. A header that is
// present but not of that form yields a value that can never authenticate.
func tokenOf(h *RequestHead, proxyForm bool) string {
	if v := h.Fields.Get(HeaderAuth); v != "" {
		if scheme, tok, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return "\x00invalid"
	}
	if !proxyForm {
		return ""
	}
	v := h.Fields.Get("Proxy-Authorization")
	if v == "" {
		return ""
	}
	scheme, rest, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "\x00invalid"
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest))
	if err != nil {
		return "\x00invalid"
	}
	_, pass, ok := strings.Cut(string(raw), ":")
	if !ok || pass == "" {
		return "\x00invalid"
	}
	return pass
}

func authStatus(err error, proxyForm bool) int {
	switch {
	case errors.Is(err, auth.ErrForbidden):
		return http.StatusForbidden
	case proxyForm:
		return http.StatusProxyAuthRequired
	}
	return http.StatusUnauthorized
}

// refuseAuth answers an unauthenticated (401 with WWW-Authenticate, or 407
// with Proxy-Authenticate for proxy-form requests) or forbidden (403)
// client with the reason. The caller's request line logs it (rate-limited,
// see logRequest), never the token.
func (s *Server) refuseAuth(cc *clientConn, h *RequestHead, proxyForm bool, err error) {
	status := authStatus(err, proxyForm)
	reason := auth.Reason(err)
	var extra []Field
	code, detail := "unauthorized", "Authentication required — set "+HeaderAuth+": Bearer <token>"
	switch {
	case status == http.StatusForbidden:
		code, detail = "forbidden", strings.TrimPrefix(err.Error(), auth.ErrForbidden.Error()+": ")
	case errors.Is(err, auth.ErrInvalid):
		detail = "Invalid or expired token"
	}
	if status == http.StatusUnauthorized {
		challenge := `Bearer realm="proxy-hopper"`
		if errors.Is(err, auth.ErrInvalid) {
			challenge += `, error="invalid_token"`
		}
		extra = append(extra, Field{Name: "WWW-Authenticate", Value: challenge})
	}
	if status == http.StatusProxyAuthRequired {
		extra = append(extra, Field{Name: "Proxy-Authenticate", Value: `Basic realm="proxy-hopper"`})
		if !errors.Is(err, auth.ErrInvalid) {
			detail = "Proxy authentication required (Proxy-Authorization: Basic with the key as password, or " + HeaderAuth + ")"
		}
	}
	_ = writeJSONFields(cc.bw, status, h.Minor, false, extra, map[string]any{"error": code, "detail": detail, "reason": reason})
}

// remoteAddr is the client's address.
func remoteAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap.Addr()
}
