// Package config is proxy-hopper's configuration: the YAML file's typed
// sections with their defaults (server.go, auth.go, targets.go,
// transparent.go, gateway.go), loading with the environment and CLI
// overrides (load.go, env.go), key normalisation and suggestions
// (keys.go), decode hooks and units (decode.go), validation one file per
// section (validate_*.go), and Resolve, which parses every string once
// and returns the values the runtime takes as they are (resolve.go).
//
// The sections split in two: server, auth and transparent only take
// effect at start-up (RestartKeys names those a reload would change);
// proxyProviders, ipPools and targets are applied by a hot reload.
// Nothing here starts a goroutine.
package config

import (
	"fmt"
	"strings"
)

// Config is proxy-hopper's YAML configuration, key for key (camelCase; the
// snake_case spelling of every key is accepted too, as proxy-hopper does).
// Load fills in every default, so after Load no *bool is nil.
type Config struct {
	Server         ServerConfig       `mapstructure:"server"`
	Auth           AuthConfig         `mapstructure:"auth"`
	ProxyProviders []ProviderConfig   `mapstructure:"proxyProviders"`
	IPPools        []IPPoolConfig     `mapstructure:"ipPools"`
	Targets        []TargetConfig     `mapstructure:"targets"`
	Transparent    TransparentConfig  `mapstructure:"transparent"`
	Interception   InterceptionConfig `mapstructure:"interception"`

	// baseDir is the directory of the config file; relative caFile paths
	// are resolved against it.
	baseDir string
	// doc is the normalized document (canonical keys), auth with the
	// PROXY_HOPPER_AUTH_* values applied: Warnings reads which keys the
	// operator set, as opposed to defaults.
	doc map[string]any
	// empty is set when the file holds no YAML at all (nothing, or only
	// comments).
	empty bool
}

// EnvPrefix starts every environment variable proxy-hopper reads: each
// server key is PROXY_HOPPER_ + its snake_case name in upper case
// (logLevel → PROXY_HOPPER_LOG_LEVEL).
const EnvPrefix = "PROXY_HOPPER_"

// ValidationError is every problem found in a config, each naming the
// target, pool or provider and the field. It never contains credentials.
type ValidationError struct {
	Problems []string
}

// MaxProblemsShown bounds the problems an error message lists; the rest
// are counted ("… and 12 more problems").
const MaxProblemsShown = 50

// Error lists the first MaxProblemsShown problems, one a line, and counts
// the rest.
func (e *ValidationError) Error() string {
	if len(e.Problems) <= MaxProblemsShown {
		return strings.Join(e.Problems, "\n")
	}
	return strings.Join(e.Problems[:MaxProblemsShown], "\n") +
		fmt.Sprintf("\n… and %d more problems", len(e.Problems)-MaxProblemsShown)
}

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}
