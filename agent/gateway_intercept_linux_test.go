package agent_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// Gateway mode with TLS interception: a LAN client with no proxy settings
// and the agent's CA trusted sends several HTTPS requests on one
// keep-alive connection (HTTP/1.1, then HTTP/2); the gateway intercepts
// them and each reaches the origin through another upstream, verified
// against the origin's CA. A client that does not trust the agent's CA
// fails, and the failure is counted.
func TestGatewayIntercept(t *testing.T) {
	e := newGatewayEnv(t)
	caCert, caKey := filepath.Join(e.dir, "icpt-ca.crt"), filepath.Join(e.dir, "icpt-ca.key")
	out, err := exec.Command(e.bin, "ca", "init", "--cert", caCert, "--key", caKey).CombinedOutput()
	if err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	e.topExtra = "interception: {caCert: " + caCert + ", caKey: " + caKey + "}\n"
	e.targetExtra = "    caFile: " + e.caFile + "\n    tlsIntercept: true\n"
	e.startAgent(t)
	for _, proto := range []string{"--http1.1", "--http2"} {
		t.Run(strings.TrimPrefix(proto, "--"), func(t *testing.T) {
			out := e.mustCurl(t, proto, "--cacert", caCert, "--resolve", "origin.test:443:"+gwOrigin,
				"-w", "connects=%{num_connects} http=%{http_version}\n",
				"https://origin.test/i1", "https://origin.test/i2", "https://origin.test/i3")
			froms := fromOf(out)
			if len(froms) != 3 {
				t.Fatalf("responses:\n%s", out)
			}
			for i, f := range froms {
				if !isGwUpstream(f) {
					t.Fatalf("request %d reached the origin from %s, not an upstream", i, f)
				}
				if i > 0 && f == froms[i-1] {
					t.Errorf("requests %d and %d both came through %s:\n%s", i-1, i, f, out)
				}
			}
			if strings.Count(out, "connects=0 ") != 2 {
				t.Errorf("curl did not keep its connection:\n%s", out)
			}
			want := map[string]string{"--http1.1": "http=1.1", "--http2": "http=2"}[proto]
			if strings.Count(out, want+"\n") != 3 {
				t.Errorf("protocol: want %s\n%s", want, out)
			}
		})
	}
	t.Run("ClientWithoutTheCA", func(t *testing.T) {
		out, err := e.curl(t, "--cacert", e.caFile, "--resolve", "origin.test:443:"+gwOrigin, "https://origin.test/x")
		if err == nil {
			t.Fatalf("a client trusting only the origin's CA accepted the agent's leaf:\n%s", out)
		}
		testenv.Eventually(t, 5*time.Second, func() error {
			m := e.scrape(t)
			if !strings.Contains(m, `proxy_hopper_tls_handshake_failures_total{reason="client_rejected_certificate"} 1`) {
				return errors.New("the rejected leaf is not counted:\n" + tlsLines(m) + "\n" + grepLines(e.log(t, 1), "handshake failed"))
			}
			return nil
		})
		m := e.scrape(t)
		for _, s := range []string{
			`proxy_hopper_tls_connections_total{handling="intercepted",mode="transparent",target="origin"} 2`,
			`proxy_hopper_tls_intercepted_protocol_total{proto="h2"} 1`,
		} {
			if !strings.Contains(m, s) {
				t.Errorf("metrics lack %s", s)
			}
		}
	})
}

// tlsLines are the TLS interception series of a scrape.
func tlsLines(m string) string {
	var out []string
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "proxy_hopper_tls_") || strings.HasPrefix(l, "proxy_hopper_intercept_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
