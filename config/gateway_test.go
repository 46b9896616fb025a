package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestGatewayConfig(t *testing.T) {
	const head = "targets:\n  - name: t\n    regex: '.*'\n    ipList: ['127.0.0.2:3128']\n"
	tests := []struct {
		name, body string
		problems   []string // substrings, one per expected problem
	}{
		{"absent", "", nil},
		{"full", `transparent:
  gateway:
    enabled: true
    interfaces: [lan0, lan1]
    uplinks: [wan0]
    ports: [80, 443]
    includeCidrs: [0.0.0.0/0, 2001:db8::/32]
    excludeCidrs: [10.0.0.0/8, 192.168.1.1]
    sourceCidrs: [192.168.0.0/16]
    port: 15002
    mark: 0x77
    table: 100
    rulePriority: 900
    tcAttach: clsact
    maxIpEntries: 1000
    max_client_entries: 500
`, nil},
		{"bad values", `transparent:
  local:
    enabled: true
    cgroups: [a]
  gateway:
    enabled: true
    uplinks: [wan0, wan0, "a/b"]
    ports: [0]
    includeCidrs: [2001:db8::/129, 10.0.0.0/8]
    excludeCidrs: [nope]
    sourceCidrs: [10.0.0.0/33]
    port: 70000
    mark: 0x5048
    table: 254
    rulePriority: 40000
    tcAttach: xdp
    maxIpEntries: -1
    maxClientEntries: 99999999
`, []string{
			"transparent.gateway: interfaces: at least one",
			`transparent.gateway: uplinks[1]: "wan0" is already in uplinks`,
			`transparent.gateway: uplinks[2]: "a/b" is not an interface name`,
			"transparent.gateway: ports[0]",
			`transparent.gateway: includeCidrs[0]: "2001:db8::/129"`,
			`transparent.gateway: excludeCidrs[0]: "nope"`,
			`transparent.gateway: sourceCidrs[0]: "10.0.0.0/33"`,
			"transparent.gateway: port must be a port",
			"transparent.gateway: mark: 0x5048 is also transparent.local.mark",
			"transparent.gateway: table: 254",
			"transparent.gateway: rulePriority: 40000",
			`transparent.gateway: tcAttach: "xdp"`,
			"transparent.gateway: maxIpEntries: -1",
			"transparent.gateway: maxClientEntries: 99999999",
		}},
		{"interface in both lists", "transparent:\n  gateway:\n    interfaces: [eth0]\n    uplinks: [eth0]\n",
			[]string{`uplinks[0]: "eth0" is already in interfaces`}},
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
	cfg, _ := loadString(t, head+"transparent:\n  gateway:\n    enabled: true\n    interfaces: [lan0]\n    max_client_entries: 7\n", nil)
	if _, err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	g := cfg.Transparent.Gateway
	if !g.Enabled || g.Interfaces[0] != "lan0" || g.Mark != DefaultGatewayMark || g.Table != DefaultGatewayTable ||
		g.RulePriority != DefaultGatewayPriority || g.TCAttach != "auto" || g.MaxIPEntries != DefaultGatewayEntries || g.MaxClientEntries != 7 {
		t.Errorf("decoded with defaults: %+v", g)
	}
}

// config.example.yaml shows every key of transparent.gateway, with the
// defaults where they are not examples.
func TestGatewayExample(t *testing.T) {
	data, err := os.ReadFile("../deploy/config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeOf(GatewayConfig{})
	for i := range typ.NumField() {
		key := typ.Field(i).Tag.Get("mapstructure")
		if !strings.Contains(string(data), "    "+key+":") {
			t.Errorf("config.example.yaml does not show transparent.gateway.%s", key)
		}
	}
	cfg, err := Load("../deploy/config.example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	g := cfg.Transparent.Gateway
	if g.Enabled || g.Port != 0 || g.Mark != DefaultGatewayMark || g.Table != DefaultGatewayTable || g.RulePriority != DefaultGatewayPriority ||
		g.TCAttach != "auto" || g.MaxIPEntries != DefaultGatewayEntries || g.MaxClientEntries != DefaultGatewayEntries || len(g.Interfaces) == 0 {
		t.Errorf("config.example.yaml gateway block: %+v", g)
	}
}
