package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/auth"
)

// An omitted targets list means all targets (as proxy-hopper); an explicit
// empty list means none, and survives loading as such.
func TestAuthTargetsDefaults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte(`
auth:
  enabled: true
  apiKeys:
    - {name: all, key: k1}
    - {name: none, key: k2, targets: []}
  transparent:
    allowCidrs:
      - {cidr: 10.0.0.0/8, targets: [api]}
      - {cidr: 192.168.1.7}
targets:
  - {name: api, regex: x, ipList: ["127.0.0.2:1"]}
`), 0o600)
	cfg, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(r.Auth)
	if err != nil {
		t.Fatal(err)
	}
	all, err := a.Authenticate("k1")
	if err != nil || all.Allows("api") != nil {
		t.Errorf("key without targets: %v", err)
	}
	none, err := a.Authenticate("k2")
	if err != nil || none.Allows("api") == nil {
		t.Errorf("key with targets: [] must allow nothing")
	}
	cfg.Auth.Transparent.AllowCIDRs[1].CIDR = "not-a-cidr"
	if _, err := cfg.Resolve(); err == nil {
		t.Errorf("bad allowCidrs entry accepted")
	}
}
