package testenv

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// probeKey finds a `probe:` or `probeUrls:` key in a config.
var probeKey = regexp.MustCompile(`(?m)(^|[\s{,])probe(Urls)?:`)

// AgentConfig returns an agent config for a test: body as it is, with
// `probe: false` added to its server section unless body sets probe or
// probeUrls itself. The prober's default URLs are public addresses; a test
// that exercises the prober names its URLs, on its own loopback origin.
func AgentConfig(body string) string {
	if probeKey.MatchString(body) {
		return body
	}
	lines := strings.Split(body, "\n")
	for i, l := range lines {
		rest, ok := strings.CutPrefix(l, "server:")
		if !ok {
			continue
		}
		rest = strings.TrimSpace(rest)
		if inner, ok := strings.CutPrefix(rest, "{"); ok { // flow style
			lines[i] = "server: {probe: false, " + inner
			if strings.TrimSpace(inner) == "}" {
				lines[i] = "server: {probe: false}"
			}
			return strings.Join(lines, "\n")
		}
		if rest != "" && !strings.HasPrefix(rest, "#") {
			return body // not a mapping: leave the error to the loader
		}
		indent := "  "
		for _, next := range lines[i+1:] {
			if t := strings.TrimLeft(next, " "); t != "" && !strings.HasPrefix(t, "#") {
				if n := len(next) - len(t); n > 0 {
					indent = next[:n]
				}
				break
			}
		}
		lines = append(lines[:i+1], append([]string{indent + "probe: false"}, lines[i+1:]...)...)
		return strings.Join(lines, "\n")
	}
	return "server:\n  probe: false\n" + body
}

// WriteAgentConfig writes AgentConfig(body) to config.yaml in a fresh
// directory and returns its path.
func WriteAgentConfig(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(AgentConfig(body)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
