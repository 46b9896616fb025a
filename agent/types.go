package agent

import (
	"crypto/tls"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// Config is proxy-hopper's YAML configuration, key for key (camelCase; the
// snake_case spelling of every key is accepted too, as proxy-hopper does).
// Load fills in every default, so after Load no *bool is nil.
type Config struct {
	Server         ServerConfig      `mapstructure:"server"`
	Auth           AuthConfig        `mapstructure:"auth"`
	ProxyProviders []ProviderConfig  `mapstructure:"proxyProviders"`
	IPPools        []IPPoolConfig    `mapstructure:"ipPools"`
	Targets        []TargetConfig    `mapstructure:"targets"`
	Transparent    TransparentConfig `mapstructure:"transparent"`

	// baseDir is the directory of the config file; relative caFile paths
	// are resolved against it.
	baseDir string
}

// ServerConfig is the `server:` block; every key also has a PROXY_HOPPER_*
// environment variable and a CLI flag.
type ServerConfig struct {
	Host             string   `mapstructure:"host"`
	Port             int      `mapstructure:"port"`
	LogLevel         string   `mapstructure:"logLevel"`
	LogFormat        string   `mapstructure:"logFormat"`
	LogFile          string   `mapstructure:"logFile"`
	Backend          string   `mapstructure:"backend"`
	RedisURL         string   `mapstructure:"redisUrl"`
	Metrics          bool     `mapstructure:"metrics"`
	MetricsPort      int      `mapstructure:"metricsPort"`
	Probe            bool     `mapstructure:"probe"`
	ProbeInterval    Duration `mapstructure:"probeInterval"`
	ProbeTimeout     Duration `mapstructure:"probeTimeout"`
	ProbeURLs        []string `mapstructure:"probeUrls"`
	ProxyReadTimeout Duration `mapstructure:"proxyReadTimeout"`
	Admin            bool     `mapstructure:"admin"`
	AdminPort        int      `mapstructure:"adminPort"`
	AdminHost        string   `mapstructure:"adminHost"`
	DebugProbes      bool     `mapstructure:"debugProbes"`
	DebugQuarantine  bool     `mapstructure:"debugQuarantine"`
	DebugBackend     bool     `mapstructure:"debugBackend"`

	// Keys proxy-hopper does not have.
	ConnectTimeout    Duration `mapstructure:"connectTimeout"`    // upstream connect + CONNECT + TLS (10s)
	IdleTimeout       Duration `mapstructure:"idleTimeout"`       // client keep-alive idle (120s)
	HeaderTimeout     Duration `mapstructure:"headerTimeout"`     // client request head (10s)
	MaxBodySize       ByteSize `mapstructure:"maxBodySize"`       // 413 above (1GiB)
	RetryBufferSize   ByteSize `mapstructure:"retryBufferSize"`   // replayable bodies up to (1MiB)
	ShutdownTimeout   Duration `mapstructure:"shutdownTimeout"`   // grace for in-flight requests (30s)
	TunnelIdleTimeout Duration `mapstructure:"tunnelIdleTimeout"` // idle CONNECT/transparent tunnel is closed, its IP freed (10m)
	RedisKeyPrefix    string   `mapstructure:"redisKeyPrefix"`    // backend redis: keys are <prefix>{<target>}:<kind> (ph:)
	RedisLeaseTTL     Duration `mapstructure:"redisLeaseTtl"`     // backend redis: an IP held by a dead agent is back after (30s)
	WatchConfig       bool     `mapstructure:"watchConfig"`       // reload when the config file changes (false); SIGHUP always reloads
	AdminToken        string   `mapstructure:"adminToken"`        // bearer token of the admin API (required when admin is on)
	AdminSessionTTL   Duration `mapstructure:"adminSessionTtl"`   // status page login lasts (12h)
	AdminSecureCookie bool     `mapstructure:"adminSecureCookie"` // session cookie always Secure (behind a TLS proxy)
	MetricsHost       string   `mapstructure:"metricsHost"`       // /metrics bind address (empty: host)
	MetricsToken      string   `mapstructure:"metricsToken"`      // /metrics needs it (Bearer, or Basic password) when set
	MaxClientRequests int      `mapstructure:"maxClientRequests"` // requests in flight per client: API key, JWT subject, or address without auth (512; 0: no cap)
	MaxClientTunnels  int      `mapstructure:"maxClientTunnels"`  // CONNECT tunnels open per client (256; 0: no cap)

	// The prober feeding the pools (README "Prober"); all off by default.
	ProbeFailuresUntilQuarantine int  `mapstructure:"probeFailuresUntilQuarantine"` // failed probes in a row that quarantine an IP in every target (0: never)
	ProbeReleasesQuarantine      bool `mapstructure:"probeReleasesQuarantine"`      // a good probe releases a quarantined IP early
	ProbeMaxPerHour              int  `mapstructure:"probeMaxPerHour"`              // probes of one IP in any hour (0: no cap)

	// Bounds on what clients can put into metrics and the log (README "Metrics").
	MetricsTagLimit    int      `mapstructure:"metricsTagLimit"`    // distinct tags per target in metrics, then "other" (100)
	RequestLogBurst    int      `mapstructure:"requestLogBurst"`    // INFO lines of failed or refused requests per outcome (refusal reason) in each requestLogInterval (10)
	RequestLogInterval Duration `mapstructure:"requestLogInterval"` // the rest are counted and summarised in one line per interval (1m)
	// Destinations no client may reach through the agent (README
	// "Destination deny-list"): CIDRs, IPs or host names (with their
	// subdomains). allowDestinations carves exceptions out of the deny-list.
	DenyDestinations  []string `mapstructure:"denyDestinations"`  // loopback, link-local, cloud metadata, localhost
	AllowDestinations []string `mapstructure:"allowDestinations"` // none
	// Client connection limits (README "Request limits and bad input").
	MaxConnections          int `mapstructure:"maxConnections"`          // open client connections, all listeners (0: from the fd limit)
	MaxConnectionsPerClient int `mapstructure:"maxConnectionsPerClient"` // open from one client address, IPv6 by /64 (4096; 0: no per-client limit)
	FdReserve               int `mapstructure:"fdReserve"`               // fds kept out of the client connections' reach (256)
}

// AuthConfig is parsed and validated now; enforced by the auth issue.
type AuthConfig struct {
	Enabled          bool                  `mapstructure:"enabled"`
	JWTSecret        string                `mapstructure:"jwtSecret"`
	JWTExpiryMinutes int                   `mapstructure:"jwtExpiryMinutes"`
	JWTIssuer        string                `mapstructure:"jwtIssuer"`      // a JWT's iss must be this (unset: not checked)
	JWTAudience      string                `mapstructure:"jwtAudience"`    // a JWT's aud must hold this (unset: a JWT with an aud is refused)
	JWTMaxLifetime   Duration              `mapstructure:"jwtMaxLifetime"` // exp at most this beyond now and iat (24h)
	DefaultRole      string                `mapstructure:"defaultRole"`    // role of a JWT without a role claim (viewer; none: refused)
	APIKeys          []APIKeyConfig        `mapstructure:"apiKeys"`
	Roles            map[string]RoleConfig `mapstructure:"roles"`
	Admin            *AdminUserConfig      `mapstructure:"admin"`
	OIDC             *OIDCConfig           `mapstructure:"oidc"`
	Transparent      AuthTransparentConfig `mapstructure:"transparent"`
}

// AdminUserConfig is auth.admin, the local admin user.
type AdminUserConfig struct {
	Username     string `mapstructure:"username"`
	PasswordHash string `mapstructure:"passwordHash"` // bcrypt
	Role         string `mapstructure:"role"`         // default admin
}

// OIDCConfig is auth.oidc.
type OIDCConfig struct {
	Issuer     string `mapstructure:"issuer"`
	Audience   string `mapstructure:"audience"`
	RolesClaim string `mapstructure:"rolesClaim"` // default proxy_hopper_role
}

// APIKeyConfig is one entry of auth.apiKeys.
type APIKeyConfig struct {
	Name    string   `mapstructure:"name"`
	Key     string   `mapstructure:"key"`
	KeyHash string   `mapstructure:"keyHash"`
	Targets []string `mapstructure:"targets"` // default ["*"]
}

// RoleConfig is one entry of auth.roles.
type RoleConfig struct {
	Permissions []string `mapstructure:"permissions"` // read, write, admin
	Targets     []string `mapstructure:"targets"`     // default ["*"]
}

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
}

// Duration is a config duration: "500ms", "1s", "5m", "2h", or bare seconds.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is a size in bytes: 1048576, "512KiB", "1MiB", "1GiB", "10MB".
type ByteSize int64

// ResolvedIP is one upstream proxy address with what the config says of it.
type ResolvedIP struct {
	Host     string
	Port     int
	Username string
	Password string
	Provider string
	Region   string
}

// Addr is host:port, the key of the IP in its pool.
func (r ResolvedIP) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// ResolvedTarget is a validated target ready to be wired: regex compiled,
// IPs resolved through its pool and providers, TLS loaded.
type ResolvedTarget struct {
	Name       string
	Regex      *regexp.Regexp
	Pool       pool.Config
	NumRetries int
	IPs        []ResolvedIP
	TLS        *tls.Config

	// MaxClientRetries is the most retries X-Proxy-Hopper-Retries may ask for.
	MaxClientRetries int
}

// String is the one-line summary `validate` prints.
func (t ResolvedTarget) String() string {
	return fmt.Sprintf("%s: %d IP(s), regex %s", t.Name, len(t.IPs), t.Regex)
}

// AuthTransparentConfig is auth.transparent: transparent clients cannot
// send credentials, so their source address decides.
type AuthTransparentConfig struct {
	AllowCIDRs []CIDRRuleConfig `mapstructure:"allowCidrs"`
}

// CIDRRuleConfig lets clients from CIDR use Targets (omitted: all).
type CIDRRuleConfig struct {
	CIDR    string   `mapstructure:"cidr"`
	Targets []string `mapstructure:"targets"`
}
