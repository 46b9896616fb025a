package config

import (
	"slices"
	"testing"
)

// The prober keys proxy-hopper does not have: defaults, env, YAML, flags.
func TestProberKeys(t *testing.T) {
	type c struct {
		name      string
		env       map[string]string
		yaml      string
		overrides map[string]any
		want      [3]any // probeFailuresUntilQuarantine, probeReleasesQuarantine, probeMaxPerHour
	}
	for _, tc := range []c{
		{"defaults", nil, "", nil, [3]any{0, false, 0}},
		{"env", map[string]string{
			"PROXY_HOPPER_PROBE_FAILURES_UNTIL_QUARANTINE": "3", "PROXY_HOPPER_PROBE_RELEASES_QUARANTINE": "yes",
			"PROXY_HOPPER_PROBE_MAX_PER_HOUR": "12",
		}, "", nil, [3]any{3, true, 12}},
		{"yaml over env", map[string]string{"PROXY_HOPPER_PROBE_MAX_PER_HOUR": "12"},
			"probeFailuresUntilQuarantine: 2\n  probeReleasesQuarantine: true\n  probeMaxPerHour: 6", nil, [3]any{2, true, 6}},
		{"snake_case yaml", nil, "probe_failures_until_quarantine: 4\n  probe_max_per_hour: 1", nil, [3]any{4, false, 1}},
		{"flags over yaml", nil, "probeFailuresUntilQuarantine: 2\n  probeReleasesQuarantine: true",
			map[string]any{"probeFailuresUntilQuarantine": "5", "probeReleasesQuarantine": false, "probeMaxPerHour": "30"}, [3]any{5, false, 30}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			body := minimal
			if tc.yaml != "" {
				body = "server:\n  " + tc.yaml + "\n" + minimal
			}
			s := mustLoad(t, body, tc.overrides).Server
			if got := [3]any{s.ProbeFailuresUntilQuarantine, s.ProbeReleasesQuarantine, s.ProbeMaxPerHour}; got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	for key, env := range map[string]string{
		"probeFailuresUntilQuarantine": "PROXY_HOPPER_PROBE_FAILURES_UNTIL_QUARANTINE",
		"probeReleasesQuarantine":      "PROXY_HOPPER_PROBE_RELEASES_QUARANTINE",
		"probeMaxPerHour":              "PROXY_HOPPER_PROBE_MAX_PER_HOUR",
	} {
		if got := EnvName(key); got != env {
			t.Errorf("EnvName(%s) = %s, want %s", key, got, env)
		}
	}
}

func TestProberKeyErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		env       map[string]string
		yaml      string
		overrides map[string]any
		want      []string
	}{
		{"negative", nil, "probeFailuresUntilQuarantine: -1\n  probeMaxPerHour: -2", nil, []string{
			"server: probeFailuresUntilQuarantine must not be negative (0 turns it off), got -1",
			"server: probeMaxPerHour must not be negative (0 is no cap), got -2",
		}},
		{"bad env", map[string]string{"PROXY_HOPPER_PROBE_MAX_PER_HOUR": "lots"}, "", nil, []string{
			`server: probeMaxPerHour: want a whole number, got "lots" (from PROXY_HOPPER_PROBE_MAX_PER_HOUR)`,
		}},
		{"bad flag", nil, "", map[string]any{"probeFailuresUntilQuarantine": "three"}, []string{
			`server: probeFailuresUntilQuarantine: want a whole number, got "three" (from command-line flag --probe-failures-until-quarantine)`,
		}},
		{"bad yaml bool", nil, "probeReleasesQuarantine: sometimes", nil, []string{
			`server: probeReleasesQuarantine: want true or false, got "sometimes"`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			body := minimal
			if tc.yaml != "" {
				body = "server:\n  " + tc.yaml + "\n" + minimal
			}
			cfg, err := loadString(t, body, tc.overrides)
			if err == nil {
				_, err = cfg.Resolve()
			}
			if got := problemsOf(t, err); !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
