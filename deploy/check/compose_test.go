package check

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// compose is the subset of the Compose specification the examples use,
// decoded strictly: a key outside it (a typo, or a feature the examples
// are not meant to need) fails the test.
type compose struct {
	Services map[string]struct {
		Image       string            `json:"image"`
		Restart     string            `json:"restart"`
		ReadOnly    bool              `json:"read_only"`
		CapDrop     []string          `json:"cap_drop"`
		SecurityOpt []string          `json:"security_opt"`
		Command     []string          `json:"command"`
		Ports       []string          `json:"ports"`
		Volumes     []string          `json:"volumes"`
		Environment map[string]string `json:"environment"`
		DependsOn   map[string]struct {
			Condition string `json:"condition"`
		} `json:"depends_on"`
		Healthcheck *struct {
			Test     []string `json:"test"`
			Interval string   `json:"interval"`
			Timeout  string   `json:"timeout"`
			Retries  int      `json:"retries"`
		} `json:"healthcheck"`
	} `json:"services"`
	Volumes map[string]struct{} `json:"volumes"`
}

// interpolation: ${VAR}, ${VAR:-default}, ${VAR:?message}.
var interp = regexp.MustCompile(`\$\{([A-Z_][A-Z0-9_]*)(?::([-?])([^}]*))?\}`)

// expand interpolates like Compose, with the given variables set.
func expand(s string, vars map[string]string) string {
	return interp.ReplaceAllStringFunc(s, func(m string) string {
		p := interp.FindStringSubmatch(m)
		if v, ok := vars[p[1]]; ok {
			return v
		}
		if p[2] == "-" {
			return p[3]
		}
		return ""
	})
}

// TestComposeExamples parses each example's docker-compose.yml strictly,
// checks the agent service (image from make image, read-only, no
// capabilities, its config mounted from the example's directory), and
// validates that config with the service's environment, as the
// container would see it.
func TestComposeExamples(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(root(t), "deploy/compose/*"))
	want := []string{"api-keys", "memory", "oidc", "redis"}
	var got []string
	for _, d := range dirs {
		got = append(got, filepath.Base(d))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("examples %v, want %v", got, want)
	}
	// What an operator puts in .env; required variables (${X:?}) must
	// be among these.
	vars := map[string]string{
		"PROXY_HOPPER_ADMIN_TOKEN":     "0123456789abcdef0123456789",
		"PROXY_HOPPER_AUTH_JWT_SECRET": "0123456789abcdef0123456789abcdef",
		"REDIS_PASSWORD":               "0123456789abcdef",
	}
	for _, d := range dirs {
		t.Run(filepath.Base(d), func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(d, "README.md")); err != nil {
				t.Error(err)
			}
			raw, err := os.ReadFile(filepath.Join(d, "docker-compose.yml"))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range interp.FindAllStringSubmatch(string(raw), -1) {
				if _, ok := vars[m[1]]; m[2] == "?" && !ok {
					t.Errorf("required variable %s is not documented in the test's .env", m[1])
				}
			}
			var c compose
			if err := yaml.UnmarshalStrict([]byte(expand(string(raw), vars)), &c); err != nil {
				t.Fatalf("docker-compose.yml: %v", err)
			}
			svc, ok := c.Services["proxy-hopper"]
			if !ok {
				t.Fatal("no proxy-hopper service")
			}
			if svc.Image != "localhost/proxy-hopper:latest" || !svc.ReadOnly || strings.Join(svc.CapDrop, ",") != "ALL" {
				t.Errorf("proxy-hopper service: image %q read_only %v cap_drop %v", svc.Image, svc.ReadOnly, svc.CapDrop)
			}
			for dep := range svc.DependsOn {
				if _, ok := c.Services[dep]; !ok {
					t.Errorf("depends on missing service %s", dep)
				}
			}
			config := ""
			for _, v := range svc.Volumes {
				parts := strings.Split(v, ":")
				if len(parts) >= 2 && parts[1] == "/etc/proxy-hopper/config.yaml" {
					config = filepath.Join(d, parts[0])
				}
			}
			if config == "" {
				t.Fatal("no config mounted at /etc/proxy-hopper/config.yaml")
			}
			var env []string
			for k, v := range svc.Environment {
				env = append(env, k+"="+v)
			}
			if err := validate(t, config, env); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestComposeValidateFails shows the Compose check can fail: the api-keys
// example with a guessable admin token is rejected.
func TestComposeValidateFails(t *testing.T) {
	config := filepath.Join(root(t), "deploy/compose/api-keys/config.yaml")
	if err := validate(t, config, []string{"PROXY_HOPPER_ADMIN=true", "PROXY_HOPPER_ADMIN_TOKEN=aaaaaaaaaaaaaaaa"}); err == nil {
		t.Fatal("admin on with a guessable token validated")
	}
}
