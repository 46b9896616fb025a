package config

import (
	"context"
	"errors"
	"strings"
)

// LoadResolved loads the config at path and resolves it, reporting every
// problem of the file in one *ValidationError: the decode problems Load
// finds (unknown keys, wrong types, bad durations) and the problems
// Resolve finds in what did decode. A problem Resolve reports about a
// field that already failed to decode (its default standing in for the
// bad value) is left out, so each mistake is named once. Errors reading
// or parsing the file are returned as they are.
func LoadResolved(ctx context.Context, path string, overrides map[string]any) (*Resolved, error) {
	cfg, err := LoadContext(ctx, path, overrides)
	var decode *ValidationError
	if err != nil && (cfg == nil || !errors.As(err, &decode)) {
		return nil, err
	}
	res, rerr := cfg.Resolve()
	if decode == nil {
		return res, rerr
	}
	all := append([]string(nil), decode.Problems...)
	var resolve *ValidationError
	if errors.As(rerr, &resolve) {
		for _, msg := range resolve.Problems {
			if !aboutFailedField(msg, decode.Problems) {
				all = append(all, msg)
			}
		}
	}
	return nil, &ValidationError{Problems: all}
}

// aboutFailedField reports whether a Resolve problem names, within the
// same entry, a field that one of the decode problems is about: decode
// problems read "<entry>: <field>: <what>", and a Resolve problem about
// that field "<entry>: … <field> …".
func aboutFailedField(msg string, decode []string) bool {
	for _, d := range decode {
		entry, rest, ok := strings.Cut(d, ": ")
		if !ok {
			continue
		}
		field, _, ok := strings.Cut(rest, ": ")
		if !ok || strings.ContainsAny(field, " \"") {
			continue // not a field problem (an unknown key, a duplicate)
		}
		body, ok := strings.CutPrefix(msg, entry+": ")
		if !ok {
			continue
		}
		if containsWord(body, field) {
			return true
		}
		// A list entry inside a section: "auth: apiKeys[0].key: …" and
		// "auth: apiKeys[0] (ci): key is required".
		if i := strings.LastIndex(field, "]."); i > 0 {
			list, sub := field[:i+1], field[i+2:]
			if rest, ok := strings.CutPrefix(body, list); ok && containsWord(rest, sub) {
				return true
			}
		}
	}
	return false
}

// containsWord reports whether s holds word not inside a longer key
// (regex in "regex is required", not in "regexes"; ipList in
// "ipPool or ipList").
func containsWord(s, word string) bool {
	isKey := func(b byte) bool {
		return b == '_' || b == '.' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z'
	}
	for i := 0; ; {
		j := strings.Index(s[i:], word)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(word)
		if (start == 0 || !isKey(s[start-1])) && (end == len(s) || !isKey(s[end]) || s[end] == '.') {
			return true
		}
		i = start + 1
	}
}

// checkHasTargets refuses an empty file (nothing but comments or blank
// lines): it is a mistake (the wrong file, a failed template). A file with
// other content but no targets is valid, as in proxy-hopper, whose GraphQL
// API adds targets at run time; Warnings says it serves nothing yet.
func (c *Config) checkHasTargets(p *problems) {
	if len(c.Targets) == 0 && c.empty {
		p.add("config: the file is empty (nothing but comments or blank lines): it needs at least one target under targets:")
	}
}
