package config

import (
	"regexp"
	"strings"
	"testing"
)

func TestRegexWarnings(t *testing.T) {
	cases := []struct {
		regex string
		want  []string // substrings of the warnings, in order; none for nil
	}{
		{`api\.example\.com`, []string{"is not anchored"}},
		{`.*google\.com.*`, []string{"is not anchored"}},
		{`(a|^b)\.example\.com`, []string{"is not anchored"}},
		{`^(https?://)?api\.example\.com(:\d+)?(/|$)`, nil},
		{`(^a|^b)\.example\.com`, nil},
		{`.*`, nil},
		{`^https?://`, nil},
		{`^https://example\.com/search\?q=`, []string{"mentions '?'"}},
		{`^(https?://)?[^/]*\.example\.com(:\d+)?(/|$)`, nil}, // [^/] holds '?' but is no literal
	}
	for _, tc := range cases {
		got := RegexWarnings([]ResolvedTarget{{Name: "t", Regex: regexp.MustCompile(tc.regex)}})
		if len(got) != len(tc.want) {
			t.Errorf("%s: warnings %q, want %d", tc.regex, got, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(got[i], w) || !strings.HasPrefix(got[i], "target 't': regex ") {
				t.Errorf("%s: warning %q lacks %q", tc.regex, got[i], w)
			}
		}
	}
}
