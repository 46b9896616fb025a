package main

import (
	"flag"
	"io"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// The prober flags reach the config, over the YAML server block.
func TestProberFlags(t *testing.T) {
	cfgPath := writeConfig(t, `
server:
  probeFailuresUntilQuarantine: 9
  probeReleasesQuarantine: true
targets:
  - {name: t, regex: '.*', ipList: ["10.0.0.1:3128"]}
`)
	for _, tc := range []struct {
		args    []string
		fails   int
		release bool
		perHour int
	}{
		{nil, 9, true, 0},
		{[]string{"--probe-failures-until-quarantine", "3", "--probe-max-per-hour", "10"}, 3, true, 10},
		{[]string{"--no-probe-releases-quarantine"}, 9, false, 0},
		{[]string{"--no-probe-releases-quarantine", "--probe-releases-quarantine"}, 9, true, 0},
	} {
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		sf := newServerFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		cfg, err := config.Load(cfgPath, sf.overrides)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		s := cfg.Server
		if s.ProbeFailuresUntilQuarantine != tc.fails || s.ProbeReleasesQuarantine != tc.release || s.ProbeMaxPerHour != tc.perHour {
			t.Errorf("%v: failures %d releases %v per hour %d; want %d %v %d", tc.args,
				s.ProbeFailuresUntilQuarantine, s.ProbeReleasesQuarantine, s.ProbeMaxPerHour, tc.fails, tc.release, tc.perHour)
		}
	}
}
