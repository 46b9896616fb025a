package config

import "time"

// BasicAuthConfig is the credentials sent to an upstream proxy.
type BasicAuthConfig struct {
	Type     string `mapstructure:"type"` // basic (the default and only type)
	Username string `mapstructure:"username"`
	Password string `mapstructure:"password"`
}

// ProviderConfig is one entry of proxyProviders.
type ProviderConfig struct {
	Name      string           `mapstructure:"name"`
	Auth      *BasicAuthConfig `mapstructure:"auth"`
	IPList    []string         `mapstructure:"ipList"`
	RegionTag string           `mapstructure:"regionTag"`
	Mutable   *bool            `mapstructure:"mutable"` // default true
	Static    *bool            `mapstructure:"static"`  // default true (defined in YAML)
}

// IPRequest draws count IPs from a provider.
type IPRequest struct {
	Provider string `mapstructure:"provider"`
	Count    int    `mapstructure:"count"`
}

// IPPoolConfig is one entry of ipPools.
type IPPoolConfig struct {
	Name       string      `mapstructure:"name"`
	IPRequests []IPRequest `mapstructure:"ipRequests"`
	IPList     []string    `mapstructure:"ipList"`
	Mutable    *bool       `mapstructure:"mutable"`
	Static     *bool       `mapstructure:"static"`
}

// IdentityConfig is a target's identity block (enforced by the identity issue).
type IdentityConfig struct {
	Enabled               bool          `mapstructure:"enabled"`
	Cookies               *bool         `mapstructure:"cookies"`             // default true
	RotateAfterRequests   int           `mapstructure:"rotateAfterRequests"` // 0: never
	RotateOn429           *bool         `mapstructure:"rotateOn429"`         // default true
	Warmup                *WarmupConfig `mapstructure:"warmup"`              // nil: no warmup
	Profile               string        `mapstructure:"profile"`
	PreserveClientHeaders bool          `mapstructure:"preserveClientHeaders"`
}

// WarmupConfig is identity.warmup: a GET sent through a fresh identity.
type WarmupConfig struct {
	Enabled *bool  `mapstructure:"enabled"` // default true
	Path    string `mapstructure:"path"`    // default /
}

// TargetConfig is one entry of targets.
type TargetConfig struct {
	Name                      string         `mapstructure:"name"`
	Regex                     string         `mapstructure:"regex"`
	IPPool                    string         `mapstructure:"ipPool"`
	IPList                    []string       `mapstructure:"ipList"`
	DefaultProxyPort          int            `mapstructure:"defaultProxyPort"`
	MinRequestInterval        Duration       `mapstructure:"minRequestInterval"`
	MaxQueueWait              Duration       `mapstructure:"maxQueueWait"`
	NumRetries                int            `mapstructure:"numRetries"`
	MaxClientRetries          *int           `mapstructure:"maxClientRetries"` // most X-Proxy-Hopper-Retries may ask for (default numRetries)
	MaxQueueLength            int            `mapstructure:"maxQueueLength"`   // requests waiting for an IP at once; more get 503 (500; 0: no cap)
	IPFailuresUntilQuarantine int            `mapstructure:"ipFailuresUntilQuarantine"`
	QuarantineTime            Duration       `mapstructure:"quarantineTime"`
	SpoofUserAgent            *bool          `mapstructure:"spoofUserAgent"` // default true
	Identity                  IdentityConfig `mapstructure:"identity"`
	Mutable                   *bool          `mapstructure:"mutable"`
	Static                    *bool          `mapstructure:"static"`
	CAFile                    string         `mapstructure:"caFile"`                // PEM, added to the system roots
	TLSInsecureSkipVerify     bool           `mapstructure:"tlsInsecureSkipVerify"` // do not verify origin certificates
	// TLSIntercept terminates the TLS of CONNECT and transparent HTTPS
	// traffic this target matches, with a certificate from the
	// interception CA, and sends each request inside on its own.
	TLSIntercept bool `mapstructure:"tlsIntercept"`
}

// DefaultTargetConfig is a target with only the defaulted keys set.
func DefaultTargetConfig() TargetConfig {
	return TargetConfig{
		DefaultProxyPort:          8080,
		MinRequestInterval:        Duration(time.Second),
		MaxQueueWait:              Duration(30 * time.Second),
		NumRetries:                3,
		IPFailuresUntilQuarantine: 5,
		QuarantineTime:            Duration(120 * time.Second),
		MaxQueueLength:            500,
	}
}

func (t *TargetConfig) setDefaults() {
	t.SpoofUserAgent, t.Mutable, t.Static = orTrue(t.SpoofUserAgent), orTrue(t.Mutable), orTrue(t.Static)
	t.Identity.Cookies, t.Identity.RotateOn429 = orTrue(t.Identity.Cookies), orTrue(t.Identity.RotateOn429)
	if w := t.Identity.Warmup; w != nil {
		w.Enabled = orTrue(w.Enabled)
		if w.Path == "" {
			w.Path = "/"
		}
	}
}
