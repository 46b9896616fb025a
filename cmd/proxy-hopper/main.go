// Command proxy-hopper is the egress agent: `run` serves, `validate` checks a
// config, `demo` runs the agent against embedded local upstreams,
// `hash-password` makes an auth.admin password hash, `ca init` writes a
// TLS interception CA, `version` prints the build.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/proxy-hopper/proxy-hopper/agent"
	"github.com/proxy-hopper/proxy-hopper/config"
	"github.com/proxy-hopper/proxy-hopper/internal/demo"
)

// version is set at link time (make build, make dist, the image:
// -ldflags '-X main.version=…' from git describe). Empty means it was not,
// and the module version recorded by the Go toolchain is used instead, so
// `go install …@v1.2.3` reports v1.2.3.
var version = ""

// buildVersion is the version the binary reports.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	return resolveVersion(version, bi, ok)
}

// resolveVersion picks the link-time version, else the main module's
// version from the build info (a tag, or the pseudo-version Go stamps from
// the VCS), else "dev".
func resolveVersion(linked string, bi *debug.BuildInfo, ok bool) string {
	if linked != "" {
		return linked
	}
	if ok && bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// Unwrap lets main see flag.ErrHelp (-h exits 0, as click's --help) and
// callers the cause.
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "proxy-hopper:", err)
	} else {
		code = 0
	}
	os.Exit(code)
}

const usage = `usage: proxy-hopper <command> [flags]

commands:
  run       start the agent (--config FILE, or PROXY_HOPPER_CONFIG)
  validate  check a config file and print its targets
  demo      run the agent against embedded local upstreams for about 20s
  bpf       status|detach|counters: the eBPF programs attached or pinned, gateway counters
  hash-password [PASSWORD]  print a bcrypt hash for auth.admin.passwordHash (asks without echo)
  ca init --cert PATH --key PATH  write a TLS interception CA (key 0600), print its fingerprint
  version   print the version

Run 'proxy-hopper <command> -h' for the flags of a command.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{code: 2, err: errors.New("no command given")}
	}
	switch args[0] {
	case "run":
		return runAgent(ctx, args[1:], stderr)
	case "validate":
		return validate(args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "bpf":
		return runBPF(args[1:], stdout, stderr)
	case "hash-password":
		return hashPassword(args[1:], os.Stdin, stdout, stderr)
	case "ca":
		return runCA(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "proxy-hopper", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &exitError{code: 2, err: fmt.Errorf("unknown command %q", args[0])}
}

// serverFlags are the `run` flags that override server: keys; only flags
// given on the command line override anything.
type serverFlags struct {
	fs        *flag.FlagSet
	overrides map[string]any
}

func newServerFlags(fs *flag.FlagSet) *serverFlags {
	sf := &serverFlags{fs: fs, overrides: map[string]any{}}
	str := func(name, key, help string) {
		fs.Func(name, help, func(v string) error { sf.overrides[key] = v; return nil })
	}
	boolean := func(name, key string, val bool, help string) {
		fs.BoolFunc(name, help, func(v string) error {
			b := v == "" || v == "true" || v == "1"
			if v != "" && v != "true" && v != "false" && v != "1" && v != "0" {
				return fmt.Errorf("want true or false, got %q", v)
			}
			if !val {
				b = !b
			}
			sf.overrides[key] = b
			return nil
		})
	}
	str("host", "host", "interface to bind (default 0.0.0.0)")
	str("port", "port", "port to listen on (default 8080)")
	str("log-level", "logLevel", "TRACE, DEBUG, INFO, WARNING or ERROR (default INFO)")
	str("log-format", "logFormat", "text or json (default text)")
	str("log-file", "logFile", "write logs to this file instead of stderr")
	boolean("metrics", "metrics", true, "enable the Prometheus /metrics endpoint")
	boolean("no-metrics", "metrics", false, "disable the Prometheus /metrics endpoint")
	str("metrics-port", "metricsPort", "port of the metrics endpoint (default 9090)")
	boolean("admin", "admin", true, "enable the admin API and status page (guarded by server.adminToken or auth's JWTs)")
	boolean("no-admin", "admin", false, "disable the admin API and status page")
	str("admin-port", "adminPort", "port of the admin API and status page (default 8081)")
	str("admin-host", "adminHost", "interface of the admin API and status page (default 0.0.0.0)")
	str("backend", "backend", "IP pool backend: memory or redis (default memory)")
	str("redis-url", "redisUrl", "Redis URL (default redis://localhost:6379/0)")
	str("redis-key-prefix", "redisKeyPrefix", "prefix of the Redis keys (default ph:)")
	str("redis-lease-ttl", "redisLeaseTtl", "how long an IP in use stays leased to a dead agent (default 30s)")
	boolean("probe", "probe", true, "enable the background IP prober")
	boolean("no-probe", "probe", false, "disable the background IP prober")
	str("probe-interval", "probeInterval", "time between probe rounds (default 60s)")
	str("probe-timeout", "probeTimeout", "timeout of one probe (default 10s)")
	boolean("watch-config", "watchConfig", true, "reload the config when its file changes (SIGHUP always reloads)")
	fs.Func("probe-urls", "comma-separated probe URLs", func(v string) error {
		var urls []string
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				urls = append(urls, u)
			}
		}
		sf.overrides["probeUrls"] = urls
		return nil
	})
	str("probe-failures-until-quarantine", "probeFailuresUntilQuarantine", "failed probes in a row that quarantine an IP in every target (default 0: never)")
	boolean("probe-releases-quarantine", "probeReleasesQuarantine", true, "a successful probe releases a quarantined IP early")
	boolean("no-probe-releases-quarantine", "probeReleasesQuarantine", false, "probes never release a quarantined IP (default)")
	str("probe-max-per-hour", "probeMaxPerHour", "probes of one IP in any hour (default 0: no cap)")
	return sf
}

// Exit codes, as proxy-hopper's (click) CLI: 0 success; 1 an invalid
// config and every failure at run time; 2 a usage error (unknown command
// or flag, `validate` without --config, a --config file that does not
// exist). `run` without --config exits 1, as proxy-hopper's does.
const (
	exitFailure = 1
	exitUsage   = 2
)

// configPath is the --config value, else PROXY_HOPPER_CONFIG; missing
// exits with missingCode (proxy-hopper: 2 for validate, 1 for run).
func configPath(p string, missingCode int) (string, error) {
	if p == "" {
		p = os.Getenv("PROXY_HOPPER_CONFIG")
	}
	if p == "" {
		return "", &exitError{code: missingCode, err: errors.New("--config (or PROXY_HOPPER_CONFIG) is required")}
	}
	return p, nil
}

// loadConfig loads and validates, reporting every problem of the file at
// once: a config file that does not exist is a usage error (exit 2), any
// other problem exits 1.
func loadConfig(ctx context.Context, path string, overrides map[string]any) (*config.Resolved, error) {
	res, err := config.LoadResolved(ctx, path, overrides)
	if err != nil {
		code := exitFailure
		if errors.Is(err, fs.ErrNotExist) {
			code = exitUsage
		}
		return nil, &exitError{code: code, err: fmt.Errorf("config error: %w", err)}
	}
	return res, nil
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "path to the YAML config (or PROXY_HOPPER_CONFIG)")
	fs.StringVar(cfgPath, "c", "", "shorthand for --config")
	sf := newServerFlags(fs)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	path, err := configPath(*cfgPath, exitFailure)
	if err != nil {
		return err
	}
	// The agent reloads on SIGHUP while it runs, from this channel: one
	// arriving during start-up waits in it and reloads once the agent
	// takes reloads; one during shutdown is dropped here instead of
	// killing the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	res, err := loadConfig(ctx, path, sf.overrides)
	if err != nil {
		return err
	}
	cfg := res.Config
	log, closer, err := agent.NewLogger(res.LogLevel, cfg.Server.LogFormat, cfg.Server.LogFile)
	if err != nil {
		return &exitError{code: exitFailure, err: err}
	}
	defer closer.Close()
	for _, w := range res.Warnings() {
		log.Warn("config: " + w)
	}
	a, err := agent.New(ctx, res, agent.Options{Logger: log, ConfigPath: path, Overrides: sf.overrides, Hangup: hup, Version: buildVersion()})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func validate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "path to the YAML config (or PROXY_HOPPER_CONFIG)")
	fs.StringVar(cfgPath, "c", "", "shorthand for --config")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	path, err := configPath(*cfgPath, exitUsage)
	if err != nil {
		return err
	}
	res, err := loadConfig(context.Background(), path, nil)
	if err != nil {
		return err
	}
	cfg, targets := res.Config, res.Targets
	fmt.Fprint(stdout, cfg.Summary(targets))
	for _, w := range res.Warnings() {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	for _, n := range cfg.AuthNotes() {
		fmt.Fprintln(stderr, "note: "+n)
	}
	return nil
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := fs.Duration("duration", 20*time.Second, "how long to drive traffic")
	plain := fs.Bool("plain", false, "print the table as plain text snapshots instead of redrawing it")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, err: err}
	}
	return demo.Run(ctx, demo.Options{Duration: *d, Out: stdout, Plain: *plain})
}
