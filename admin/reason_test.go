package admin

import "testing"

func TestReasonText(t *testing.T) {
	for code, want := range map[string]string{
		"":                        "reason not known (quarantined before this agent started, or by another agent)",
		"admin":                   "admin action",
		"status_429":              "rate limited: the upstream answered 429",
		"status_503":              "upstream error: answered 503",
		"status_403":              "the upstream answered 403",
		"connect_refused":         "connect to the upstream proxy: connection refused",
		"connect_timeout":         "connect to the upstream proxy: timed out",
		"upstream_body_reset":     "reading the upstream's answer: connection reset",
		"connect_status_502":      "the upstream proxy answered CONNECT with 502",
		"proxy_status_407":        "the upstream proxy refused its credentials (407)",
		"probe_proxy_unreachable": "probe failed: the upstream proxy could not be reached",
		"probe_timeout":           "probe failed: timed out",
		"probe_http_error":        "probe failed: answered 500 or more",
		"tls_error":               "TLS handshake failed",
		"something_new":           "something_new",
	} {
		if got := reasonText(code); got != want {
			t.Errorf("reasonText(%q) = %q, want %q", code, got, want)
		}
	}
}
