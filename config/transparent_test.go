package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// config.example.yaml shows every key of the transparent: block, with the
// defaults where they are not examples.
func TestTransparentExample(t *testing.T) {
	data, err := os.ReadFile("../deploy/config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []reflect.Type{reflect.TypeOf(TransparentConfig{}), reflect.TypeOf(LocalTransparentConfig{})} {
		for i := range typ.NumField() {
			key := typ.Field(i).Tag.Get("mapstructure")
			if !strings.Contains(string(data), "  "+key+":") {
				t.Errorf("config.example.yaml does not show transparent %s", key)
			}
		}
	}
	cfg, err := Load("../deploy/config.example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	tr := cfg.Transparent
	l := tr.Local
	if tr.Unmatched != "reject" || l.Enabled || l.Pinned || l.Port != 0 || l.Mark != DefaultTransparentMark ||
		r.Transparent.Local.Sockmap != sockmapDefault || l.PinDir != DefaultPinDir || len(l.Cgroups) == 0 {
		t.Errorf("config.example.yaml transparent block: %+v", tr)
	}
}

func TestTransparentConfig(t *testing.T) {
	const head = "targets:\n  - name: t\n    regex: '.*'\n    ipList: ['127.0.0.2:3128']\n"
	tests := []struct {
		name, body string
		problems   []string // substrings, one per expected problem
	}{
		{"absent", "", nil},
		{"full", `transparent:
  unmatched: direct
  local:
    enabled: true
    cgroups: [proxied]
    ports: [80, 443]
    includeCidrs: [10.0.0.0/8, 2001:db8::/32]
    excludeCidrs: [10.1.2.3]
    sockmap: false
    port: 15001
    mark: 0x77
    pinned: true
    pinDir: /sys/fs/bpf/ph-test
`, nil},
		{"bad values", `transparent:
  unmatched: drop
  local:
    enabled: true
    ports: [0, 70000]
    includeCidrs: [10.0.0.0/33]
    excludeCidrs: [nope]
    port: 99999
    pinDir: relative/dir
`, []string{
			`pinDir: "relative/dir" must be a clean absolute path`,
			`transparent: unmatched: "drop" is not a policy`,
			"transparent.local: ports[0]", "transparent.local: ports[1]",
			`includeCidrs[0]: "10.0.0.0/33"`, `excludeCidrs[0]: "nope"`,
			"transparent.local: port must be a port", "cgroups: at least one cgroup",
		}},
		{"cgroup escapes", "transparent:\n  local:\n    cgroups: ['../x']\n", []string{`cgroups[0]: "../x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadString(t, head+tt.body, nil)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			_, err = cfg.Resolve()
			if len(tt.problems) == 0 {
				if err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				return
			}
			got := problemsOf(t, err)
			if len(got) != len(tt.problems) {
				t.Errorf("got %d problems, want %d:\n%s", len(got), len(tt.problems), strings.Join(got, "\n"))
			}
			for _, want := range tt.problems {
				found := false
				for _, g := range got {
					found = found || strings.Contains(g, want)
				}
				if !found {
					t.Errorf("no problem contains %q in:\n%s", want, strings.Join(got, "\n"))
				}
			}
		})
	}
	cfg, _ := loadString(t, head+"transparent:\n  local:\n    enabled: true\n    cgroups: [a]\n    ports: [80]\n    sockmap: false\n    mark: 0x77\n    pinned: true\n", nil)
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Transparent.Local
	if cfg.Transparent.Unmatched != "reject" || l.Mark != 0x77 || r.Transparent.Local.Sockmap || l.Ports[0] != 80 || !l.Enabled || !l.Pinned || l.PinDir != DefaultPinDir {
		t.Errorf("decoded %+v", cfg.Transparent)
	}
	cfg, _ = loadString(t, head, nil)
	r, _ = cfg.Resolve()
	if l := cfg.Transparent.Local; l.Mark != DefaultTransparentMark || !r.Transparent.Local.Sockmap || l.Pinned || l.PinDir != DefaultPinDir {
		t.Errorf("defaults: %+v", cfg.Transparent.Local)
	}
}
