package config

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode"
)

// Key normalization: snake_case spellings, unknown keys, shapes, and
// "did you mean" suggestions.

// extraAliases are spellings proxy-hopper accepts besides camelCase and the
// automatic snake_case of every key.
var extraAliases = map[reflect.Type]map[string]string{
	reflect.TypeOf(TargetConfig{}): {
		"poolName":              "ipPool",
		"pool_name":             "ipPool",
		"maxRequestTimeInQueue": "maxQueueWait",
	},
	reflect.TypeOf(IdentityConfig{}): {
		"rotate_on_429": "rotateOn429",
	},
}

type fieldInfo struct {
	key string // canonical (camelCase) key
	typ reflect.Type
}

type structKeys struct {
	byName    map[string]fieldInfo // every accepted spelling
	canonical []string
}

var keyCache sync.Map // reflect.Type → *structKeys

func keysOf(t reflect.Type) *structKeys {
	if k, ok := keyCache.Load(t); ok {
		return k.(*structKeys)
	}
	k := &structKeys{byName: map[string]fieldInfo{}}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		fi := fieldInfo{key: tag, typ: f.Type}
		k.byName[tag] = fi
		k.byName[snakeCase(tag)] = fi
		k.canonical = append(k.canonical, tag)
	}
	for alias, canon := range extraAliases[t] {
		k.byName[alias] = k.byName[canon]
	}
	keyCache.Store(t, k)
	return k
}

// inOrder returns the keys of m in the order of the struct's fields, so
// problems come in the order of the file's documentation; unknown keys last.
func (k *structKeys) inOrder(m map[string]any) []string {
	pos := func(key string) int {
		if fi, ok := k.byName[key]; ok {
			return slices.Index(k.canonical, fi.key)
		}
		return len(k.canonical)
	}
	keys := sortedKeys(m)
	sort.SliceStable(keys, func(i, j int) bool { return pos(keys[i]) < pos(keys[j]) })
	return keys
}

// snakeCase turns camelCase into snake_case: logLevel → log_level.
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

var (
	durationType = reflect.TypeOf(Duration(0))
	byteSizeType = reflect.TypeOf(ByteSize(0))
)

// normalizer rewrites a YAML document to canonical keys, reporting unknown
// keys, keys given twice (camelCase and snake_case) and wrong shapes.
type normalizer struct{ p *problems }

// walk returns v normalized for type t. entity is the label of the
// enclosing list entry or section ("" at the top), key the path inside it.
func (n normalizer) walk(v any, t reflect.Type, entity, key string) any {
	if v == nil {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType || t == byteSizeType:
		return v
	case t.Kind() == reflect.Struct:
		m, ok := toStringMap(v)
		if !ok {
			n.shape(entity, key, "a mapping", v)
			return nil
		}
		keys := keysOf(t)
		out := make(map[string]any, len(m))
		seen := map[string]string{}
		for _, k := range keys.inOrder(m) {
			fi, ok := keys.byName[k]
			if !ok {
				n.unknown(entity, key, k, keys.canonical)
				continue
			}
			if prev, dup := seen[fi.key]; dup {
				n.p.add("%s: %q and %q are the same key; set it once", where(entity, key), prev, k)
				continue
			}
			seen[fi.key] = k
			childEntity, childKey := entity, join(key, fi.key)
			if entity == "" {
				childEntity, childKey = fi.key, ""
			}
			out[fi.key] = n.walk(m[k], fi.typ, childEntity, childKey)
		}
		return out
	case t.Kind() == reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			n.shape(entity, key, "a list", v)
			return nil
		}
		et := t.Elem()
		out := make([]any, len(l))
		for i, item := range l {
			if key == "" && !strings.Contains(entity, "[") {
				// A top-level list: each entry is an entity of its own.
				out[i] = n.walk(item, et, entityLabel(entity, i, normalizeName(item)), "")
				continue
			}
			out[i] = n.walk(item, et, entity, fmt.Sprintf("%s[%d]", key, i))
		}
		return out
	case t.Kind() == reflect.Map:
		m, ok := toStringMap(v)
		if !ok {
			n.shape(entity, key, "a mapping", v)
			return nil
		}
		if t.Elem().Kind() == reflect.Interface {
			return m
		}
		out := make(map[string]any, len(m))
		for _, k := range sortedKeys(m) {
			out[k] = n.walk(m[k], t.Elem(), entity, join(key, k))
		}
		return out
	}
	return v
}

// normalizeName lets entityLabel find a name given in any map shape.
func normalizeName(v any) any {
	m, ok := toStringMap(v)
	if !ok {
		return v
	}
	return m
}

func (n normalizer) shape(entity, key, want string, got any) {
	n.p.add("%s: want %s, got %s", where(entity, key), want, describe(got))
}

func (n normalizer) unknown(entity, key, k string, known []string) {
	msg := fmt.Sprintf("unknown key %q", join(key, k))
	if entity == "" {
		msg = fmt.Sprintf("unknown top-level key %q", k)
	}
	if s := suggest(k, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", join(key, s))
	}
	if entity != "" {
		msg = entity + ": " + msg
	}
	n.p.add("%s", msg)
}

// where is "entity: key" or just the entity.
func where(entity, key string) string {
	switch {
	case entity == "":
		return key
	case key == "":
		return entity
	}
	return entity + ": " + key
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// toStringMap accepts the map shapes a YAML decoder produces.
func toStringMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, val := range m {
			out[fmt.Sprint(k)] = val
		}
		return out, true
	}
	return nil, false
}

// describe names the YAML kind of v, never its value.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
		return "a number"
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	}
	return fmt.Sprintf("a %T", v)
}

// suggest returns the known key closest to k, if it is close.
func suggest(k string, known []string) string {
	fold := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	best, bestD := "", 3
	for _, c := range known {
		if fold(c) == fold(k) {
			return c
		}
		if d := levenshtein(fold(k), fold(c)); d < bestD && d < len(c)/2+1 {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
