package config

import "time"

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

// DefaultServerConfig is the server block with nothing set: proxy-hopper's
// defaults plus ours for the keys it does not have.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Host:          "0.0.0.0",
		Port:          8080,
		LogLevel:      "INFO",
		LogFormat:     "text",
		Backend:       "memory",
		RedisURL:      "redis://localhost:6379/0",
		MetricsPort:   9090,
		Probe:         true,
		ProbeInterval: Duration(60 * time.Second),
		ProbeTimeout:  Duration(10 * time.Second),
		ProbeURLs:     []string{"http://1.1.1.1", "http://www.google.com"},
		AdminPort:     8081,
		AdminHost:     "0.0.0.0",

		AdminSessionTTL: Duration(12 * time.Hour),

		ConnectTimeout:    Duration(10 * time.Second),
		IdleTimeout:       Duration(120 * time.Second),
		HeaderTimeout:     Duration(10 * time.Second),
		MaxBodySize:       1 << 30,
		RetryBufferSize:   1 << 20,
		ShutdownTimeout:   Duration(30 * time.Second),
		TunnelIdleTimeout: Duration(10 * time.Minute),
		RedisKeyPrefix:    "ph:",
		RedisLeaseTTL:     Duration(30 * time.Second),

		MetricsTagLimit:         100,
		RequestLogBurst:         10,
		RequestLogInterval:      Duration(time.Minute),
		DenyDestinations:        DefaultDenyDestinations(),
		AllowDestinations:       []string{},
		MaxConnectionsPerClient: 4096,
		FdReserve:               256,
		MaxClientRequests:       512,
		MaxClientTunnels:        256,
	}
}
