package proxy

import (
	"bytes"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

// TestMatchSaysWhenOnlyPathOrQueryMatched: a URL that proxy-hopper's
// whole-URL search would have given a target, but that matches only
// through its path or query, selects no target, and the log says why
// (once per burst, naming the target, not the URL).
func TestMatchSaysWhenOnlyPathOrQueryMatched(t *testing.T) {
	var logs bytes.Buffer
	api := &Target{Name: "api", Regex: regexp.MustCompile(`api\.example\.com`)}
	s := New([]*Target{api}, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if got := s.match("http://api.example.com/x?q=1"); got != api {
		t.Fatalf("the host's own URL: %v, want api", got)
	}
	if logs.Len() != 0 {
		t.Fatalf("a match logged: %s", logs.String())
	}
	for _, u := range []string{"http://127.0.0.1/?api.example.com", "http://127.0.0.1/api.example.com"} {
		if got := s.match(u); got != nil {
			t.Errorf("%s matched %s", u, got.Name)
		}
	}
	if n := strings.Count(logs.String(), "matches this URL only through its path or query"); n != 2 || !strings.Contains(logs.String(), "target=api") {
		t.Errorf("log:\n%s\nwant two lines naming target api", logs.String())
	}
	if strings.Contains(logs.String(), "127.0.0.1") {
		t.Errorf("the log repeats the client's URL:\n%s", logs.String())
	}
	logs.Reset()
	if s.match("http://127.0.0.1/other") != nil || logs.Len() != 0 {
		t.Errorf("an unrelated URL: %s", logs.String())
	}
}
