package testenv

import "testing"

func TestAgentConfig(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"targets: []\n", "server:\n  probe: false\ntargets: []\n"},
		{"server:\n  host: 127.0.0.1\ntargets: []\n", "server:\n  probe: false\n  host: 127.0.0.1\ntargets: []\n"},
		{"\nserver:  # c\n\n    port: 1\n", "\nserver:  # c\n    probe: false\n\n    port: 1\n"},
		{"server: {port: 1}\n", "server: {probe: false, port: 1}\n"},
		{"server: {}\n", "server: {probe: false}\n"},
		{"server:\n  probe: true\n  probeUrls: [x]\n", "server:\n  probe: true\n  probeUrls: [x]\n"},
		{"server: {probe: true}\n", "server: {probe: true}\n"},
		{"server:\n  probeUrls: [x]\n", "server:\n  probeUrls: [x]\n"},
	} {
		if got := AgentConfig(tc.in); got != tc.want {
			t.Errorf("AgentConfig(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
