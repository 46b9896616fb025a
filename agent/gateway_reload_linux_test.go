package agent_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// Gateway mode never intercepts flows to the upstream proxies' addresses,
// and that follows reloads (as local transparent mode's exclusions do): an
// upstream a reload removes is intercepted like any address, one it adds
// is routed untouched at once.
func TestGatewayUpstreamExclusionsFollowReload(t *testing.T) {
	e := newGatewayEnv(t)
	third := gwUpstreams[2]
	// Something on the third upstream's address, on an intercepted port,
	// saying who connected: the gateway's uplink (intercepted, unmatched,
	// sent direct by the agent) or the client (routed).
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "from=%s\n", strings.Split(r.RemoteAddr, ":")[0])
	})}
	go srv.Serve(e.up.Listen(t, third+":80"))
	t.Cleanup(func() { srv.Close() })
	a := e.startAgent(t)
	path := filepath.Join(e.dir, fmt.Sprintf("gw-agent-%d.yaml", e.agents))
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reloads := 0
	reload := func(cfg string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		reloads++
		if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			if logs := e.log(t, e.agents); strings.Count(logs, "config reloaded") < reloads {
				return fmt.Errorf("reload %d not applied:\n%s", reloads, logs)
			}
			return nil
		})
	}
	from := func() string {
		t.Helper()
		return strings.TrimSpace(e.mustCurl(t, "http://"+third+"/"))
	}
	if got := from(); got != "from="+gwClient {
		t.Fatalf("an upstream's address at start: %q, want it routed (from=%s)", got, gwClient)
	}
	shrunk := strings.Replace(strings.Replace(string(orig), fmt.Sprintf(", %q", third+":8888"), "", 1), "count: 3", "count: 2", 1)
	if shrunk == string(orig) {
		t.Fatal("test config not rewritten")
	}
	reload(shrunk)
	if got := from(); got != "from="+gwUplink {
		t.Errorf("an address no longer upstream after a reload: %q, want it intercepted (from=%s)", got, gwUplink)
	}
	reload(string(orig))
	if got := from(); got != "from="+gwClient {
		t.Errorf("an upstream a reload added: %q, want it routed (from=%s)", got, gwClient)
	}
}
