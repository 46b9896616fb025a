package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// reflectKeys is how the agent found the restart-only keys before
// RestartKeys (by reflection over the mapstructure tags): the oracle the
// explicit comparison must agree with, key for key and in order.
func reflectKeys(running, next *Config) []string {
	var out []string
	for _, sec := range []struct {
		key  string
		a, b any
	}{
		{"server", running.Server, next.Server},
		{"auth", running.Auth, next.Auth},
		{"transparent", running.Transparent, next.Transparent},
		{"interception", running.Interception, next.Interception},
	} {
		reflectDiff(sec.key, reflect.ValueOf(sec.a), reflect.ValueOf(sec.b), &out)
	}
	return out
}

func reflectDiff(key string, a, b reflect.Value, out *[]string) {
	if a.Kind() != reflect.Struct {
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, key)
		}
		return
	}
	for i := range a.NumField() {
		f := a.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		reflectDiff(key+"."+name, a.Field(i), b.Field(i), out)
	}
}

// leaves visits every key of the restart-only sections with a settable
// value, as reflectDiff names them.
func leaves(key string, v reflect.Value, visit func(key string, v reflect.Value)) {
	if v.Kind() != reflect.Struct {
		visit(key, v)
		return
	}
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		leaves(key+"."+name, v.Field(i), visit)
	}
}

// change gives v a different value.
func change(t *testing.T, key string, v reflect.Value) {
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Slice:
		v.Set(reflect.Append(v, reflect.New(v.Type().Elem()).Elem()))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		m.SetMapIndex(reflect.ValueOf("added"), reflect.New(v.Type().Elem()).Elem())
		v.Set(m)
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		} else {
			v.Set(reflect.Zero(v.Type()))
		}
	default:
		t.Fatalf("%s: cannot change a %s", key, v.Kind())
	}
}

// TestRestartKeysCoverEveryKey changes each key of the server, auth and
// transparent sections alone, and then all of them at once: RestartKeys
// names exactly what the reflective comparison names, in the same order
// (the reload WARN's keys= is built from it and must not change).
func TestRestartKeysCoverEveryKey(t *testing.T) {
	clearEnv(t)
	load := func() *Config {
		cfg := mustLoad(t, `
auth:
  apiKeys: [{name: k, key: secret-key-1}]
  roles: {r: {permissions: [read]}}
  admin: {username: a, passwordHash: "$2a$04$EiFxL5Kxo66vcr.4LE/N4OALNhLUWGIL9Wuo/Qbwt7izD1PD6uCtW"}
  transparent: {allowCidrs: [{cidr: 10.0.0.0/8}]}
transparent:
  local: {sockmap: false, cgroups: [x]}
`+minimal, nil)
		if _, err := cfg.Resolve(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	running := load()
	if got := RestartKeys(running, load()); len(got) != 0 {
		t.Fatalf("same config: RestartKeys = %q", got)
	}
	all := load()
	var want []string
	for _, sec := range []struct {
		key  string
		v, w reflect.Value
	}{
		{"server", reflect.ValueOf(&all.Server).Elem(), reflect.ValueOf(&running.Server).Elem()},
		{"auth", reflect.ValueOf(&all.Auth).Elem(), reflect.ValueOf(&running.Auth).Elem()},
		{"transparent", reflect.ValueOf(&all.Transparent).Elem(), reflect.ValueOf(&running.Transparent).Elem()},
		{"interception", reflect.ValueOf(&all.Interception).Elem(), reflect.ValueOf(&running.Interception).Elem()},
	} {
		leaves(sec.key, sec.v, func(key string, v reflect.Value) {
			want = append(want, key)
			change(t, key, v)
		})
	}
	for i, key := range want {
		next := load()
		j := 0
		for _, v := range []reflect.Value{reflect.ValueOf(&next.Server).Elem(), reflect.ValueOf(&next.Auth).Elem(), reflect.ValueOf(&next.Transparent).Elem(), reflect.ValueOf(&next.Interception).Elem()} {
			leaves("", v, func(_ string, v reflect.Value) {
				if j == i {
					change(t, key, v)
				}
				j++
			})
		}
		got := RestartKeys(running, next)
		if !slices.Equal(got, []string{key}) {
			t.Errorf("only %s changed: RestartKeys = %q", key, got)
		}
		if oracle := reflectKeys(running, next); !slices.Equal(got, oracle) {
			t.Errorf("only %s changed: RestartKeys = %q, reflection names %q", key, got, oracle)
		}
	}
	got := RestartKeys(running, all)
	if !slices.Equal(got, want) || !slices.Equal(got, reflectKeys(running, all)) {
		t.Errorf("every key changed: RestartKeys =\n%q\nwant\n%q", got, want)
	}
	if len(want) < 70 {
		t.Errorf("only %d keys visited", len(want))
	}
}
