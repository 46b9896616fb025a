package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

func TestDestinationLists(t *testing.T) {
	clearEnv(t)
	const targets = "targets:\n  - {name: a, regex: '.*', ipList: [\"127.0.0.2\"]}\n"
	cfg := mustResolve(t, "server:\n  denyDestinations: []\n"+targets).Config
	if len(cfg.Server.DenyDestinations) != 0 {
		t.Errorf("denyDestinations: [] gave %v", cfg.Server.DenyDestinations)
	}
	res := mustResolve(t, "server:\n  denyDestinations: [10.0.0.0/8, '2130706433', '[::ffff:10.1.2.3]', Metadata.Example.]\n  allowDestinations: [10.1.0.0/16]\n"+targets)
	dp := destinationPolicy(res, nil)
	if got := fmt.Sprint(dp.Deny, dp.DenyNames, dp.Allow); got != "[10.0.0.0/8 127.0.0.1/32 10.1.2.3/32] [metadata.example] [10.1.0.0/16]" {
		t.Errorf("policy %s", got)
	}
	if !slices.Contains(dp.OwnPorts, 8080) {
		t.Errorf("own ports %v lack the listener's", dp.OwnPorts)
	}
	t.Setenv("PROXY_HOPPER_ALLOW_DESTINATIONS", "127.0.0.0/8, ::1")
	cfg = mustResolve(t, targets).Config
	if !slices.Equal(cfg.Server.AllowDestinations, []string{"127.0.0.0/8", "::1"}) {
		t.Errorf("allowDestinations from the environment: %v", cfg.Server.AllowDestinations)
	}
	probs := loadAndResolve(t, "server:\n  denyDestinations: [10.0.0.0/33, 'a b', 'fe80::1%eth0/64']\n  allowDestinations: ['x/y']\n"+targets)
	want := []string{`server: denyDestinations[0]: "10.0.0.0/33" is not`, `server: denyDestinations[1]: "a b" is not`,
		`server: denyDestinations[2]`, `server: allowDestinations[0]: "x/y" is not`}
	for _, w := range want {
		if !slices.ContainsFunc(probs, func(p string) bool { return strings.HasPrefix(p, w) }) {
			t.Errorf("no problem %q in %q", w, probs)
		}
	}
}

// With the defaults, an agent refuses a loopback origin (in a spelling a
// resolver reads as 127.0.0.1) before any IP is used; allowDestinations
// lets it through.
func TestDefaultDenyDestinations(t *testing.T) {
	clearEnv(t)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") }))
	defer origin.Close()
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	port := origin.Listener.Addr().(interface{ String() string }).String()
	port = port[strings.LastIndex(port, ":")+1:]
	for _, tc := range []struct {
		server string
		want   int
	}{
		{"", http.StatusForbidden},
		{"  allowDestinations: [127.0.0.0/8]\n", http.StatusOK},
	} {
		cfgPath := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(cfgPath, []byte(fmt.Sprintf("server:\n  probe: false\n%stargets:\n  - {name: one, regex: '.*', ipList: [%q], minRequestInterval: 0}\n", tc.server, tp.Addr)), 0o600)
		a, ln := newFileAgent(t, cfgPath)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
		req.Header.Set(proxy.HeaderTarget, "http://127.1:"+port)
		tr := &http.Transport{}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.StatusCode != tc.want {
			t.Errorf("server block %q: %d %s", tc.server, resp.StatusCode, b)
		}
		cancel()
		<-done
	}
	if n := len(tp.Requests(t)); n != 1 {
		t.Errorf("upstream saw %d requests, want 1 (the allowed one)", n)
	}
}
