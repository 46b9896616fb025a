package admin

import "strings"

// reasonText describes a quarantine reason (Event.Reason) for people; the
// code itself stays in the API and the page's data attributes.
func reasonText(code string) string {
	if code == "" {
		return "reason not known (quarantined before this agent started, or by another agent)"
	}
	if c, ok := strings.CutPrefix(code, "probe_"); ok {
		return "probe failed: " + reasonText(c)
	}
	switch code {
	case CauseAdmin:
		return "admin action"
	case "status_429":
		return "rate limited: the upstream answered 429"
	case "proxy_status_407":
		return "the upstream proxy refused its credentials (407)"
	case "proxy_unreachable":
		return "the upstream proxy could not be reached"
	case "tls_error":
		return "TLS handshake failed"
	case "timeout":
		return "timed out"
	case "connection_error":
		return "connection error"
	case "http_error":
		return "answered 500 or more"
	}
	if n, ok := strings.CutPrefix(code, "connect_status_"); ok {
		return "the upstream proxy answered CONNECT with " + n
	}
	if n, ok := strings.CutPrefix(code, "status_"); ok {
		if strings.HasPrefix(n, "5") {
			return "upstream error: answered " + n
		}
		return "the upstream answered " + n
	}
	for _, s := range []struct{ suffix, text string }{
		{"_refused", "connection refused"}, {"_timeout", "timed out"}, {"_reset", "connection reset"},
		{"_closed", "connection closed early"}, {"_error", "connection error"},
	} {
		if stage, ok := strings.CutSuffix(code, s.suffix); ok {
			switch stage {
			case "connect":
				return "connect to the upstream proxy: " + s.text
			case "upstream", "upstream_body":
				return "reading the upstream's answer: " + s.text
			}
			return stage + ": " + s.text
		}
	}
	return code
}
