package proxy

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCleanTag: the tag label is valid UTF-8 and at most 64 characters,
// cut as proxy-hopper cuts it (characters, not bytes).
func TestCleanTag(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"search", "search"},
		{strings.Repeat("x", 70), strings.Repeat("x", 64)},
		{strings.Repeat("a", 63) + "é", strings.Repeat("a", 63) + "é"}, // 65 bytes, 64 characters
		{strings.Repeat("é", 100), strings.Repeat("é", 64)},
		{strings.Repeat("😀", 65), strings.Repeat("😀", 64)},
		{"bad\xffbyte", "bad\uFFFDbyte"},
		{strings.Repeat("\xff", 1<<16), "\uFFFD"},
	} {
		got := CleanTag(c.in)
		if got != c.want {
			t.Errorf("CleanTag(%.20q…) = %q, want %q", c.in, got, c.want)
		}
		if !utf8.ValidString(got) || utf8.RuneCountInString(got) > MaxTagLen {
			t.Errorf("CleanTag(%.20q…) = %q: invalid or too long", c.in, got)
		}
	}
}
