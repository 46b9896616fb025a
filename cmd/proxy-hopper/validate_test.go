package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// runBin runs the built binary with a clean PROXY_HOPPER_CONFIG and
// returns its exit code, stdout and stderr.
func runBin(t *testing.T, bin string, env []string, args ...string) (int, string, string) {
	t.Helper()
	c := exec.Command(bin, args...)
	c.Env = append(append(os.Environ(), "PROXY_HOPPER_CONFIG="), env...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	code := exitCode(err)
	if code < 0 {
		t.Fatalf("%v: %v", args, err)
	}
	return code, stdout.String(), stderr.String()
}

// TestExitCodes runs every verb's failures through the real binary: exit
// codes are proxy-hopper's (click): 1 for an invalid config and failures
// at run time, 2 for usage errors, 0 for help.
func TestExitCodes(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("targets:\n  - {name: a, regex: '(', ipList: [a]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := writeConfig(t, "targets:\n  - {name: a, regex: '^a', ipList: ['127.0.0.2:3128']}\n")
	missing := filepath.Join(dir, "missing.yaml")
	cases := []struct {
		name   string
		env    []string
		args   []string
		code   int
		stderr string
	}{
		{"no command", nil, nil, 2, "usage: proxy-hopper"},
		{"unknown command", nil, []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"help", nil, []string{"validate", "-h"}, 0, "-config"},
		{"validate, bad flag", nil, []string{"validate", "--nope"}, 2, "flag provided but not defined"},
		{"validate, no --config", nil, []string{"validate"}, 2, "--config (or PROXY_HOPPER_CONFIG) is required"},
		{"validate, missing file", nil, []string{"validate", "--config", missing}, 2, "no such file or directory"},
		{"validate, directory", nil, []string{"validate", "--config", dir}, 1, "config error: read config"},
		{"validate, invalid", nil, []string{"validate", "--config", bad}, 1, `config error: targets[0] (a): regex "(" is not valid`},
		{"validate, invalid from the environment", []string{"PROXY_HOPPER_CONFIG=" + bad}, []string{"validate"}, 1, "config error:"},
		{"validate, bad server variable", []string{"PROXY_HOPPER_PORT=eighty"}, []string{"validate", "--config", good}, 1,
			`server: port: want a whole number, got "eighty" (from PROXY_HOPPER_PORT)`},
		{"run, bad flag", nil, []string{"run", "--nope"}, 2, "flag provided but not defined"},
		{"run, no --config", nil, []string{"run"}, 1, "--config (or PROXY_HOPPER_CONFIG) is required"},
		{"run, missing file", nil, []string{"run", "--config", missing}, 2, "no such file or directory"},
		{"run, invalid", nil, []string{"run", "--config", bad}, 1, "config error:"},
		{"run, log file not writable", nil, []string{"run", "--config", good, "--log-file", filepath.Join(missing, "x.log")}, 1, "x.log"},
		{"run, bad flag value", nil, []string{"run", "--config", good, "--port", "99999"}, 1, "server: port must be a port from 1 to 65535, got 99999"},
		{"demo, bad flag", nil, []string{"demo", "--nope"}, 2, "flag provided but not defined"},
		{"hash-password, two arguments", nil, []string{"hash-password", "a", "b"}, 2, "one PASSWORD at most"},
		{"bpf, no subcommand", nil, []string{"bpf"}, 2, "usage: proxy-hopper bpf"},
		{"bpf counters, invalid config", nil, []string{"bpf", "counters", "--config", bad}, 1, "config error:"},
	}
	for _, c := range cases {
		code, stdout, stderr := runBin(t, bin, c.env, c.args...)
		if code != c.code || !strings.Contains(stderr, c.stderr) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q (stdout %q)", c.name, code, stderr, c.code, c.stderr, stdout)
		}
	}
}

// TestValidateReportsEveryProblem: one run of validate names every problem
// of the file, decode problems (a bad duration, a wrong type) and
// validation problems alike, each with its target and field, and exits 1.
func TestValidateReportsEveryProblem(t *testing.T) {
	bin := buildBinary(t)
	cfg := writeConfig(t, `
targets:
  - name: api
    regex: '^api\.example\.com'
    ipList: ["127.0.0.2:3128"]
    maxQueueWait: 30 seconds
    numRetries: -2
  - name: web
    regex: '['
    ipList: ["127.0.0.3:3128"]
    quarantineTime: forever
    ipFailuresUntilQuarantine: "five"
  - name: api
    regex: '^x'
    ipPool: nowhere
`)
	code, stdout, stderr := runBin(t, bin, nil, "validate", "--config", cfg)
	if code != 1 || stdout != "" {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
	for _, want := range []string{
		`targets[0] (api): maxQueueWait: invalid duration "30 seconds"`,
		`targets[0] (api): numRetries must be 0 or more, got -2`,
		`targets[1] (web): quarantineTime: invalid duration "forever"`,
		`targets[1] (web): ipFailuresUntilQuarantine: want a whole number, got "five"`,
		`targets[1] (web): regex "[" is not valid RE2 syntax`,
		`targets[2] (api): name "api" is already used by targets[0]`,
		`targets[2] (api): ipPool "nowhere" is not defined`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "ipFailuresUntilQuarantine must be at least 1") {
		t.Errorf("a field that did not decode is reported twice:\n%s", stderr)
	}

	// Bounded: 120 bad targets print 50 problems and a count of the rest.
	var b strings.Builder
	b.WriteString("targets:\n")
	for i := range 120 {
		fmt.Fprintf(&b, "  - {name: t%d, regex: '^a', ipList: ['127.0.0.2'], minRequestInterval: never}\n", i)
	}
	code, _, stderr = runBin(t, bin, nil, "validate", "--config", writeConfig(t, b.String()))
	if code != 1 || strings.Count(stderr, "invalid duration") != 50 || !strings.Contains(stderr, "… and 70 more problems") {
		t.Errorf("120 problems: exit %d, %d shown, stderr ends %q", code, strings.Count(stderr, "invalid duration"), stderr[max(0, len(stderr)-120):])
	}
}

// TestValidateEmptyFile: an empty file, or one of comments only, is an
// error that says so, not "0 target(s) defined"; a file without targets
// but with other content is valid (targets may come at run time) and
// warned about.
func TestValidateEmptyFile(t *testing.T) {
	bin := buildBinary(t)
	for _, body := range []string{"", "# nothing yet\n\n", "server:\n  port: 8080\n"} {
		path := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := runBin(t, bin, nil, "validate", "--config", path)
		if body == "server:\n  port: 8080\n" {
			if code != 0 || !strings.Contains(stdout, "0 target(s) defined") || !strings.Contains(stderr, "warning: no targets: every request is refused") {
				t.Errorf("%q: exit %d, stdout %q, stderr %q", body, code, stdout, stderr)
			}
			continue
		}
		if code != 1 || stdout != "" || !strings.Contains(stderr, "at least one target") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", body, code, stdout, stderr)
		}
	}
}

// TestValidateWarnings: validate prints its warnings on stderr after the
// summary (exit 0): a target behind a catch-all, the admin API on every
// interface in plain HTTP, auth keys while auth is off, a key not read.
func TestValidateWarnings(t *testing.T) {
	bin := buildBinary(t)
	cfg := writeConfig(t, `
server:
  admin: true
  adminToken: 0123456789abcdef0123
  debugBackend: true
auth:
  apiKeys: [{name: ci, key: 0123456789abcdef}]
targets:
  - {name: all, regex: '.*', ipList: ['127.0.0.2:3128']}
  - {name: api, regex: '^api\.example\.com', ipList: ['127.0.0.3:3128']}
`)
	code, stdout, stderr := runBin(t, bin, nil, "validate", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "Config OK — 2 target(s) defined.") || strings.Contains(stdout, "warning") {
		t.Fatalf("exit %d, stdout:\n%s", code, stdout)
	}
	for _, want := range []string{
		"warning: target 'api' is never selected: target 'all', earlier in the list, has the catch-all regex '.*'",
		"warning: server.admin: the admin API listens on 0.0.0.0:8081 over plain HTTP",
		"warning: auth.enabled is off: auth.apiKeys is set and does nothing",
		"warning: server.debugBackend is set but not read by this version",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// TestRunLogsWarnings: `run` logs each of validate's warnings as a WARN
// line at start-up, and starts.
func TestRunLogsWarnings(t *testing.T) {
	bin := buildBinary(t)
	port := testenv.FreePort(t, "127.0.0.1")
	cfg := writeConfig(t, `
server:
  host: 127.0.0.1
  logFormat: json
  debugQuarantine: true
targets:
  - {name: all, regex: '.*', ipList: ['127.0.0.2:3128']}
  - {name: api, regex: '^api\.example\.com', ipList: ['127.0.0.3:3128']}
`)
	var logs bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfg, "--port", fmt.Sprint(port))
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	testenv.WaitListening(t, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs.String())
	}
	want := map[string]bool{
		"config: target 'api' is never selected: target 'all'": false,
		"config: server.debugQuarantine is set but not read":   false,
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		for w := range want {
			for _, v := range rec {
				if s, ok := v.(string); ok && strings.HasPrefix(s, w) && strings.Contains(line, `"WARN`) { // WARN or WARNING
					want[w] = true
				}
			}
		}
	}
	for w, seen := range want {
		if !seen {
			t.Errorf("no WARN line %q in the logs:\n%s", w, logs.String())
		}
	}
}
