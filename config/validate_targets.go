package config

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/identity"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

type providerInfo struct {
	cfg     *ProviderConfig
	entries []upstream
	ok      bool
}

type poolInfo struct {
	cfg    *IPPoolConfig
	label  string
	inline []upstream
	ok     bool
}

func (c *Config) checkProviders(p *problems) map[string]*providerInfo {
	out := map[string]*providerInfo{}
	first := map[string]int{}
	for i := range c.ProxyProviders {
		pc := &c.ProxyProviders[i]
		label := entityLabel("proxyProviders", i, map[string]any{"name": pc.Name})
		info := &providerInfo{cfg: pc, ok: true}
		if pc.Name == "" {
			p.add("%s: name is required", label)
			info.ok = false
		} else if j, dup := first[pc.Name]; dup {
			p.add("%s: name %q is already used by proxyProviders[%d]", label, pc.Name, j)
		} else {
			first[pc.Name] = i
			out[pc.Name] = info
		}
		if len(pc.IPList) == 0 {
			p.add("%s: ipList is required and must not be empty", label)
			info.ok = false
		}
		var listOK bool
		info.entries, listOK = parseIPList(p, label, pc.IPList)
		info.ok = info.ok && listOK
		if a := pc.Auth; a != nil {
			if a.Type != "" && !strings.EqualFold(a.Type, "basic") {
				p.add("%s: auth.type: %q is not supported (want basic)", label, a.Type)
			}
			if a.Username == "" {
				p.add("%s: auth.username is required", label)
			}
		}
	}
	return out
}

func (c *Config) checkPools(p *problems, providers map[string]*providerInfo) map[string]*poolInfo {
	out := map[string]*poolInfo{}
	first := map[string]int{}
	for i := range c.IPPools {
		pc := &c.IPPools[i]
		label := entityLabel("ipPools", i, map[string]any{"name": pc.Name})
		info := &poolInfo{cfg: pc, label: label, ok: true}
		if pc.Name == "" {
			p.add("%s: name is required", label)
		} else if j, dup := first[pc.Name]; dup {
			p.add("%s: name %q is already used by ipPools[%d]", label, pc.Name, j)
		} else {
			first[pc.Name] = i
			out[pc.Name] = info
		}
		if len(pc.IPRequests) == 0 && len(pc.IPList) == 0 {
			p.add("%s: needs ipRequests or ipList (it has no IPs)", label)
			info.ok = false
		}
		for j, r := range pc.IPRequests {
			switch prov, ok := providers[r.Provider]; {
			case r.Provider == "":
				p.add("%s: ipRequests[%d]: provider is required", label, j)
				info.ok = false
			case !ok:
				p.add("%s: ipRequests[%d]: provider %q is not defined (defined providers: %s)", label, j, r.Provider, namesOf(c.ProxyProviders, func(x ProviderConfig) string { return x.Name }))
				info.ok = false
			case !prov.ok:
				info.ok = false
			}
			if r.Count < 1 {
				p.add("%s: ipRequests[%d]: count must be at least 1, got %d", label, j, r.Count)
				info.ok = false
			}
		}
		var listOK bool
		info.inline, listOK = parseIPList(p, label, pc.IPList)
		info.ok = info.ok && listOK
	}
	return out
}

func namesOf[T any](list []T, name func(T) string) string {
	if len(list) == 0 {
		return "none"
	}
	names := make([]string, len(list))
	for i, x := range list {
		names[i] = name(x)
	}
	return strings.Join(names, ", ")
}

func (c *Config) resolveTargets(p *problems, providers map[string]*providerInfo, pools map[string]*poolInfo) []ResolvedTarget {
	out := make([]ResolvedTarget, 0, len(c.Targets))
	first := map[string]int{}
	for i := range c.Targets {
		t := &c.Targets[i]
		label := entityLabel("targets", i, map[string]any{"name": t.Name})
		rt := ResolvedTarget{Name: t.Name, NumRetries: t.NumRetries, SpoofUserAgent: t.SpoofUserAgent == nil || *t.SpoofUserAgent}
		if t.Name == "" {
			p.add("%s: name is required", label)
		} else if j, dup := first[t.Name]; dup {
			p.add("%s: name %q is already used by targets[%d]", label, t.Name, j)
		} else {
			first[t.Name] = i
		}
		if t.Regex == "" {
			p.add("%s: regex is required", label)
		} else if re, err := regexp.Compile(t.Regex); err != nil {
			p.add("%s: regex %q is not valid RE2 syntax (Go regexp: no lookaround, no backreferences): %v", label, t.Regex, reErr(err))
		} else {
			rt.Regex = re
		}
		if t.NumRetries < 0 {
			p.add("%s: numRetries must be 0 or more, got %d", label, t.NumRetries)
		}
		rt.MaxClientRetries = t.NumRetries
		if m := t.MaxClientRetries; m != nil {
			rt.MaxClientRetries = *m
			switch {
			case *m > maxHeaderRetries:
				p.add("%s: maxClientRetries must be at most %d (the most %s can say), got %d", label, maxHeaderRetries, "X-Proxy-Hopper-Retries", *m)
			case *m < t.NumRetries:
				p.add("%s: maxClientRetries (%d) must not be below numRetries (%d): the header can always lower the retries", label, *m, t.NumRetries)
			}
		}
		if t.IPFailuresUntilQuarantine < 1 {
			p.add("%s: ipFailuresUntilQuarantine must be at least 1, got %d", label, t.IPFailuresUntilQuarantine)
		}
		checkPort(p, label, "defaultProxyPort", t.DefaultProxyPort)
		checkIdentity(p, label, &t.Identity)
		rt.Identity = identityConfig(&t.Identity)
		rt.Pool = pool.Config{
			MinRequestInterval:      t.MinRequestInterval.D(),
			MaxQueueWait:            t.MaxQueueWait.D(),
			FailuresUntilQuarantine: t.IPFailuresUntilQuarantine,
			QuarantineTime:          t.QuarantineTime.D(),
			MaxQueueLength:          t.MaxQueueLength,
		}
		if err := rt.Pool.Validate(); err != nil && t.IPFailuresUntilQuarantine >= 1 {
			p.add("%s: %v", label, err)
		}
		rt.IPs = c.targetIPs(p, label, t, providers, pools)
		rt.TLS = c.targetTLS(p, label, t)
		rt.Intercept = t.TLSIntercept
		out = append(out, rt)
	}
	return out
}

// reErr drops the "error parsing regexp: " prefix Go puts on every error.
// maxHeaderRetries is the largest X-Proxy-Hopper-Retries value honoured.
const maxHeaderRetries = 100

func reErr(err error) string {
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}

func checkIdentity(p *problems, label string, id *IdentityConfig) {
	if id.RotateAfterRequests < 0 {
		p.add("%s: identity.rotateAfterRequests must be at least 1 (or left out), got %d", label, id.RotateAfterRequests)
	}
	if w := id.Warmup; w != nil && !strings.HasPrefix(w.Path, "/") {
		p.add("%s: identity.warmup.path must start with /", label)
	}
}

func (c *Config) targetIPs(p *problems, label string, t *TargetConfig, providers map[string]*providerInfo, pools map[string]*poolInfo) []ResolvedIP {
	port := t.DefaultProxyPort
	resolve := func(u upstream, prov *ProviderConfig) ResolvedIP {
		ip := ResolvedIP{Host: u.host, Port: u.port}
		if ip.Port == 0 {
			ip.Port = port
		}
		if prov != nil {
			ip.Provider, ip.Region = prov.Name, prov.RegionTag
			if prov.Auth != nil {
				ip.Username, ip.Password = prov.Auth.Username, prov.Auth.Password
			}
		}
		if u.hasCreds { // credentials in the URL win over the provider's
			ip.Username, ip.Password = u.user, u.pass
		}
		return ip
	}
	var ips []ResolvedIP
	switch {
	case t.IPPool != "" && t.IPList != nil:
		p.add("%s: set either ipPool or ipList, not both", label)
		return nil
	case t.IPPool != "":
		pi, ok := pools[t.IPPool]
		if !ok {
			p.add("%s: ipPool %q is not defined (defined pools: %s)", label, t.IPPool, namesOf(c.IPPools, func(x IPPoolConfig) string { return x.Name }))
			return nil
		}
		if !pi.ok {
			return nil // the pool's problems are reported with the pool
		}
		for _, r := range pi.cfg.IPRequests {
			prov := providers[r.Provider]
			n := min(r.Count, len(prov.entries)) // fewer when the provider has fewer
			for _, u := range prov.entries[:n] {
				ips = append(ips, resolve(u, prov.cfg))
			}
		}
		for _, u := range pi.inline {
			ips = append(ips, resolve(u, nil))
		}
	case t.IPList != nil:
		// An explicitly empty list is a target with no IP for now (see
		// README, Hot reload): its requests wait up to maxQueueWait.
		entries, _ := parseIPList(p, label, t.IPList)
		for _, u := range entries {
			ips = append(ips, resolve(u, nil))
		}
	default:
		p.add("%s: needs ipPool or ipList (neither is set)", label)
		return nil
	}
	seen := map[string]bool{}
	for _, ip := range ips {
		key := canonicalAddr(ip)
		if seen[key] {
			p.add("%s: address %s is listed more than once", label, ip.Addr())
		}
		seen[key] = true
	}
	return ips
}

func canonicalAddr(ip ResolvedIP) string {
	h := strings.ToLower(strings.TrimSuffix(ip.Host, "."))
	if a := net.ParseIP(h); a != nil {
		h = a.String()
	}
	return net.JoinHostPort(h, strconv.Itoa(ip.Port))
}

// targetTLS builds the TLS config for origins of t: nil when neither caFile
// nor tlsInsecureSkipVerify is set. caFile's certificates are added to the
// system roots (not a replacement for them); a relative caFile is read
// from the config file's directory.
func (c *Config) targetTLS(p *problems, label string, t *TargetConfig) *tls.Config {
	if t.CAFile == "" && !t.TLSInsecureSkipVerify {
		return nil
	}
	tc := &tls.Config{InsecureSkipVerify: t.TLSInsecureSkipVerify} //nolint:gosec // the operator asked for it
	if t.CAFile == "" {
		return tc
	}
	path := t.CAFile
	if !filepath.IsAbs(path) && c.baseDir != "" {
		path = filepath.Join(c.baseDir, path)
	}
	data, err := readFileLimited(context.Background(), path, MaxConfigBytes)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		p.add("%s: caFile %q: cannot read it: %v", label, t.CAFile, err)
		return nil
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			p.add("%s: caFile %q: certificate %d: %v", label, t.CAFile, n+1, err)
			return nil
		}
		roots.AddCert(cert)
		n++
	}
	if n == 0 {
		p.add("%s: caFile %q: no PEM certificate in it", label, t.CAFile)
		return nil
	}
	tc.RootCAs = roots
	return tc
}

// identityConfig is the identity policy of a target's identity block
// (Enabled false when it is off).
func identityConfig(ic *IdentityConfig) identity.Config {
	if !ic.Enabled {
		return identity.Config{}
	}
	cfg := identity.DefaultConfig()
	cfg.Enabled = true
	if ic.Cookies != nil {
		cfg.Cookies = *ic.Cookies
	}
	if ic.RotateOn429 != nil {
		cfg.RotateOn429 = *ic.RotateOn429
	}
	cfg.RotateAfterRequests = ic.RotateAfterRequests
	cfg.Profile = ic.Profile
	cfg.PreserveClientHeaders = ic.PreserveClientHeaders
	if w := ic.Warmup; w != nil {
		cfg.Warmup = identity.Warmup{Enabled: w.Enabled == nil || *w.Enabled, Path: w.Path}
	}
	return cfg
}
