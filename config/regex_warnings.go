package config

import (
	"fmt"
	"regexp/syntax"
	"strings"
)

// RegexWarnings are the targets whose regex is open to more than its author
// likely meant, one line each, for `validate` to print and `run` to log.
// They are not errors: proxy-hopper configs commonly have them.
//
// Targets are matched on scheme://host[:port]/path without the query, and
// a host named only in the path never counts (see proxy.Target), so a
// query or path cannot widen what a key reaches. What a regex can still
// do is match other hosts that contain the name it gives: an unanchored
// 'api\.example\.com' also takes api.example.com.attacker.example, and
// with auth on, every key allowed that target reaches that host.
func RegexWarnings(targets []ResolvedTarget) []string {
	var out []string
	for _, t := range targets {
		if t.Regex == nil {
			continue
		}
		re := t.Regex
		if re.MatchString("http://proxy-hopper.invalid/") && re.MatchString("proxy-hopper.invalid:443") {
			continue // takes any host by design (.*)
		}
		tree, err := syntax.Parse(re.String(), syntax.Perl)
		if err != nil {
			continue
		}
		if mentionsQuery(tree) {
			out = append(out, fmt.Sprintf("target %s: regex %s mentions '?', but targets are matched without the query string: that part never matches",
				pyRepr(t.Name), pyRepr(re.String())))
		}
		if !anchoredAtStart(tree) {
			out = append(out, fmt.Sprintf("target %s: regex %s is not anchored with ^: it also matches other hosts whose names contain it "+
				"(a.example.com.attacker.example), and with auth on every key allowed %s reaches them; "+
				`anchor it, e.g. '^(https?://)?api\.example\.com(:\d+)?(/|$)' (CONNECT is matched on host:port)`,
				pyRepr(t.Name), pyRepr(re.String()), pyRepr(t.Name)))
		}
	}
	return out
}

// anchoredAtStart reports whether every match must begin at the start of
// the text.
func anchoredAtStart(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpBeginText, syntax.OpBeginLine:
		return true
	case syntax.OpConcat:
		return len(re.Sub) > 0 && anchoredAtStart(re.Sub[0])
	case syntax.OpCapture:
		return anchoredAtStart(re.Sub[0])
	case syntax.OpAlternate:
		for _, s := range re.Sub {
			if !anchoredAtStart(s) {
				return false
			}
		}
		return len(re.Sub) > 0
	}
	return false
}

// mentionsQuery reports whether the regex has a literal '?'.
func mentionsQuery(re *syntax.Regexp) bool {
	if re.Op == syntax.OpLiteral && strings.ContainsRune(string(re.Rune), '?') {
		return true
	}
	for _, s := range re.Sub {
		if mentionsQuery(s) {
			return true
		}
	}
	return false
}
