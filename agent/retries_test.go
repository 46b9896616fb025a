package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/proxy"
)

// TestClientRetriesCapWired: targets[].maxClientRetries and
// targets[].maxQueueLength reach the data path. A request asking for 100
// retries gets numRetries+1 attempts on a target without maxClientRetries,
// and maxClientRetries+1 on one with it.
func TestClientRetriesCapWired(t *testing.T) {
	var dead []string
	for range 3 {
		dead = append(dead, fmt.Sprintf(`"127.0.0.9:%d"`, testenv.FreePort(t, "127.0.0.9")))
	}
	list := fmt.Sprintf("[%s, %s, %s]", dead[0], dead[1], dead[2])
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server:
  probe: false
targets:
  - name: capped
    regex: 'capped\.invalid'
    ipList: %s
    minRequestInterval: 0
    numRetries: 1
    maxQueueLength: 7
    ipFailuresUntilQuarantine: 100
  - name: raised
    regex: 'raised\.invalid'
    ipList: %s
    minRequestInterval: 0
    numRetries: 1
    maxClientRetries: 4
    ipFailuresUntilQuarantine: 100
`, list, list)), 0o600); err != nil {
		t.Fatal(err)
	}
	a, ln := newFileAgent(t, cfgPath)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if got := a.Targets()[0].Pool.Config().MaxQueueLength; got != 7 {
		t.Errorf("maxQueueLength in the pool = %d, want 7", got)
	}
	for _, tc := range []struct {
		host     string
		attempts int
	}{{"capped.invalid", 2}, {"raised.invalid", 5}} {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/", nil)
		req.Header.Set(proxy.HeaderTarget, "http://"+tc.host)
		req.Header.Set(proxy.HeaderRetries, "100")
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var doc struct {
			Attempts []any `json:"attempts"`
		}
		if err := json.Unmarshal(b, &doc); err != nil || resp.StatusCode != 502 {
			t.Fatalf("%s: %d %s", tc.host, resp.StatusCode, b)
		}
		if len(doc.Attempts) != tc.attempts {
			t.Errorf("%s with %s: 100: %d attempts, want %d", tc.host, proxy.HeaderRetries, len(doc.Attempts), tc.attempts)
		}
	}
}
