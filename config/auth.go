package config

// AuthConfig is the `auth:` block: the checks at the boundary (API keys,
// JWTs, roles with their targets, transparent clients by source address).
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

func (a *AuthConfig) setDefaults() {
	for i := range a.APIKeys {
		if a.APIKeys[i].Targets == nil {
			a.APIKeys[i].Targets = []string{"*"}
		}
	}
	for name, r := range a.Roles {
		if r.Targets == nil {
			r.Targets = []string{"*"}
		}
		if r.Permissions == nil {
			r.Permissions = []string{}
		}
		a.Roles[name] = r
	}
	if a.Admin != nil && a.Admin.Role == "" {
		a.Admin.Role = "admin"
	}
	if a.OIDC != nil && a.OIDC.RolesClaim == "" {
		a.OIDC.RolesClaim = "proxy_hopper_role"
	}
}
