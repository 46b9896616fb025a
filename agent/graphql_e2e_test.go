package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/auth"
	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
)

// gql posts a GraphQL request and returns its data and error messages.
func (e *adminEnv) gql(token, query string, vars map[string]any) (map[string]any, []string) {
	e.t.Helper()
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	code, out := e.call("POST", "/graphql", token, string(body))
	if code != 200 {
		e.t.Fatalf("POST /graphql: %d %s", code, out)
	}
	var resp struct {
		Data   map[string]any `json:"data"`
		Errors []struct {
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		e.t.Fatalf("GraphQL answer %q: %v", out, err)
	}
	var msgs []string
	for _, m := range resp.Errors {
		msgs = append(msgs, m.Message)
	}
	return resp.Data, msgs
}

// resolvedOf lists target web's resolved IPs through GraphQL.
func (e *adminEnv) resolvedOf() []string {
	e.t.Helper()
	data, errs := e.gql(testAdminToken, `{ target(name: "web") { resolvedIps { host port provider } } }`, nil)
	if errs != nil {
		e.t.Fatalf("query: %v", errs)
	}
	var out []string
	t, _ := data["target"].(map[string]any)
	ips, _ := t["resolvedIps"].([]any)
	for _, ip := range ips {
		m := ip.(map[string]any)
		out = append(out, fmt.Sprintf("%s:%v", m["host"], m["port"]))
	}
	slices.Sort(out)
	return out
}

const fleetEntities = `proxyProviders:
  - name: lab
    static: false
    ipList: ["%[1]s"]
  - name: fixed
    ipList: ["127.0.0.40:3128"]
ipPools:
  - name: pool
    static: false
    ipRequests: [{provider: lab, count: 50}]
targets:
  - name: web
    regex: '127\.0\.0\.1'
    ipPool: pool
    minRequestInterval: 0
    maxQueueWait: 5s
    numRetries: 2
`

// TestGraphQLFleet is the script of a proxy-hopper user, unchanged, against
// three agents on one Redis: add a provider IP through one agent's
// GraphQL API, quarantine an address; every agent serves the change within
// a second. Then the schema's queries, the original's refusals (static,
// unknown pool, invalid config), and concurrent mutations.
func TestGraphQLFleet(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	tp1 := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	tp2 := testenv.StartTinyproxy(t, "127.0.0.3", testenv.TinyproxyOptions{})
	server := fmt.Sprintf("  backend: redis\n  redisUrl: %s\n  redisKeyPrefix: 'gql-%d:'", srv.URL(0), os.Getpid())
	start := func() *adminEnv { return startAdminAgent(t, server, fmt.Sprintf(fleetEntities, tp1.Addr)) }
	e1, e2, e3 := start(), start(), start()

	// The script.
	data, errs := e1.gql(testAdminToken, `mutation Add($p: String!, $a: String!) { addIpToProvider(provider: $p, address: $a) { name ipList } }`,
		map[string]any{"p": "lab", "a": tp2.Addr})
	if errs != nil || fmt.Sprint(data["addIpToProvider"]) != fmt.Sprintf("map[ipList:[%s %s] name:lab]", tp1.Addr, tp2.Addr) {
		t.Fatalf("addIpToProvider: %v %v", data, errs)
	}
	want := slices.Sorted(slices.Values([]string{tp1.Addr, tp2.Addr}))
	testenv.Eventually(t, time.Second, func() error {
		for i, e := range []*adminEnv{e1, e2, e3} {
			if got := e.resolvedOf(); !slices.Equal(got, want) {
				return fmt.Errorf("agent %d resolves %v", i+1, got)
			}
		}
		return nil
	})
	serves(t, time.Second, want, e1, e2, e3)
	e1.api("POST", "/api/targets/web/ips/"+tp1.Addr+"/quarantine", `{"seconds": 600}`, 200)
	testenv.Eventually(t, time.Second, func() error {
		for i, e := range []*adminEnv{e2, e3} {
			if ip, ok := findIP(e.target("web"), tp1.Addr); !ok || ip.State != "quarantined" {
				return fmt.Errorf("agent %d: %s is %+v", i+2, tp1.Addr, ip)
			}
		}
		return nil
	})
	if got := e3.fetch("/via-tp2"); got != 200 {
		t.Errorf("request with %s quarantined: %d", tp1.Addr, got)
	}

	// The whole schema, as the original's clients query it.
	data, errs = e2.gql(testAdminToken, `{
  targets { name regex poolName resolvedIps { host port provider } minRequestInterval maxQueueWait numRetries
            ipFailuresUntilQuarantine quarantineTime defaultProxyPort spoofUserAgent mutable static }
  pools { name ipRequests { provider count } mutable static }
  providers { name ipList regionTag mutable static hasAuth }
  status { authEnabled userSub userRole }
  pool(name: "pool") { name }
  provider(name: "nope") { name }
}`, nil)
	if errs != nil {
		t.Fatalf("schema query: %v", errs)
	}
	b, _ := json.Marshal(data)
	for _, w := range []string{`"poolName":"pool"`, `"maxQueueWait":5`, `"minRequestInterval":0`, `"numRetries":2`, `"quarantineTime":120`,
		`"defaultProxyPort":8080`, `"static":true`, `"ipRequests":[{"count":50,"provider":"lab"}]`, `"hasAuth":false`, `"regionTag":null`,
		`"authEnabled":false`, `"userRole":"admin"`, `"pool":{"name":"pool"}`, `"provider":null`, `"provider":"lab"`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("schema query misses %s:\n%s", w, b)
		}
	}

	// Refusals, in the original's words, and nothing stored.
	for _, tc := range []struct{ q, want string }{
		{`mutation { addIpToProvider(provider: "fixed", address: "127.0.0.41:3128") { name } }`, "Provider 'fixed' is config-static and cannot be updated via the API"},
		{`mutation { removeTarget(name: "web") }`, "Target 'web' is config-static and cannot be removed via the API"},
		{`mutation { addTarget(input: {name: "t2", regex: "x", poolName: "nope"}) { name } }`, "Pool 'nope' not found in the repository."},
		{`mutation { addTarget(input: {name: "t2", regex: "(", poolName: "pool"}) { name } }`, "targets[1] (t2)"},
		{`mutation { addIpToProvider(provider: "lab", address: "` + tp2.Addr + `") { name } }`, "already in provider 'lab'"},
		{`mutation { addIpToProvider(provider: "lab", address: "a b@c") { name } }`, "is not a host or host:port"},
		{`mutation { addPool(input: {name: "pool", ipRequests: []}) { name } }`, "Pool 'pool' already exists in the repository."},
	} {
		if _, errs := e3.gql(testAdminToken, tc.q, nil); len(errs) != 1 || !strings.Contains(errs[0], tc.want) {
			t.Errorf("%s: errors %q, want %q", tc.q, errs, tc.want)
		}
	}
	// A GET runs queries only.
	if code, body := e1.call("GET", "/graphql?query="+strings.ReplaceAll(`mutation{removePool(name:"pool")}`, " ", "%20"), testAdminToken, ""); code != 200 || !strings.Contains(body, "Permission denied") {
		t.Errorf("mutation over GET: %d %s", code, body)
	}

	// A runtime target, on every agent.
	if _, errs := e2.gql(testAdminToken, `mutation { addTarget(input: {name: "t2", regex: "t2\\.example", poolName: "pool", numRetries: 1}) { name static } }`, nil); errs != nil {
		t.Fatalf("addTarget: %v", errs)
	}
	testenv.Eventually(t, time.Second, func() error {
		for i, e := range []*adminEnv{e1, e2, e3} {
			if _, ok := e.a.reload.rtsByName("t2"); !ok {
				return fmt.Errorf("agent %d has no target t2", i+1)
			}
		}
		return nil
	})

	// Concurrent mutations through two agents lose nothing.
	var wg sync.WaitGroup
	for i, e := range []*adminEnv{e1, e2} {
		for j := range 6 {
			wg.Go(func() {
				addr := fmt.Sprintf("127.0.%d.%d:3128", 20+i, 1+j)
				if _, errs := e.gql(testAdminToken, `mutation($a: String!) { addIpToProvider(provider: "lab", address: $a) { name } }`, map[string]any{"a": addr}); errs != nil {
					t.Errorf("concurrent add %s: %v", addr, errs)
				}
			})
		}
	}
	wg.Wait()
	testenv.Eventually(t, time.Second, func() error {
		data, _ := e3.gql(testAdminToken, `{ provider(name: "lab") { ipList } }`, nil)
		l := data["provider"].(map[string]any)["ipList"].([]any)
		if len(l) != 2+12 {
			return fmt.Errorf("lab has %d IPs, want 14", len(l))
		}
		return nil
	})
}

// TestGraphQLRoles: with auth on, a viewer's JWT reads and cannot change;
// an operator's changes; an API key is refused; no token is 401.
func TestGraphQLRoles(t *testing.T) {
	tp := testenv.StartTinyproxy(t, "127.0.0.2", testenv.TinyproxyOptions{})
	e := startAdminAgent(t, "", `auth:
  enabled: true
  jwtSecret: graphql-roles-secret-0123456789
  apiKeys: [{name: k, key: api-key-0123456789abcdef}]
`+fmt.Sprintf(fleetEntities, tp.Addr))
	tok := func(role string) string {
		return auth.SignJWT("graphql-roles-secret-0123456789", map[string]any{"sub": role + "-user", "role": role, "exp": time.Now().Add(time.Hour).Unix()})
	}
	data, errs := e.gql(tok("viewer"), `{ status { authEnabled userSub userRole } providers { name } }`, nil)
	if errs != nil || fmt.Sprint(data["status"]) != "map[authEnabled:true userRole:viewer userSub:viewer-user]" {
		t.Errorf("viewer query: %v %v", data, errs)
	}
	if _, errs := e.gql(tok("viewer"), `mutation { removePool(name: "pool") }`, nil); len(errs) != 1 || !strings.Contains(errs[0], "Permission denied: 'write' required") {
		t.Errorf("viewer mutation: %v", errs)
	}
	if _, errs := e.gql(tok("operator"), `mutation { addIpToProvider(provider: "lab", address: "127.0.0.50:3128") { name } }`, nil); errs != nil {
		t.Errorf("operator mutation: %v", errs)
	}
	if code, body := e.call("POST", "/graphql", "api-key-0123456789abcdef", `{"query": "{ providers { name } }"}`); code != 200 || !strings.Contains(body, "Permission denied: 'read' required") {
		t.Errorf("API key: %d %s", code, body)
	}
	if code, _ := e.call("POST", "/graphql", "", `{"query": "{ providers { name } }"}`); code != 401 {
		t.Errorf("no token: %d, want 401", code)
	}
	if code, body := e.call("GET", "/api/v1/status", tok("viewer"), ""); code != 200 || !strings.Contains(body, `"ip_count": 2`) || !strings.Contains(body, `"sub": "viewer-user"`) {
		t.Errorf("/api/v1/status: %d %s", code, body)
	}
	if code, body := e.call("GET", "/health", "", ""); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("/health: %d %s", code, body)
	}
	// Hostile requests: over the size limit, nested past the depth limit,
	// not JSON; the agent answers each and keeps serving.
	big := `{"query": "{ providers { name } }", "pad": "` + strings.Repeat("x", 70<<10) + `"}`
	if code, body := e.call("POST", "/graphql", tok("viewer"), big); code != 413 {
		t.Errorf("70 KiB request: %d %.200s", code, body)
	}
	deep := "{ targets { resolvedIps { " + strings.Repeat("a { ", 20) + "b" + strings.Repeat(" }", 20) + " } } }"
	if _, errs := e.gql(tok("viewer"), deep, nil); len(errs) == 0 || !strings.Contains(strings.Join(errs, "\n"), "depth") {
		t.Errorf("a query nested 22 deep: errors %q, want the depth limit", errs)
	}
	if code, _ := e.call("POST", "/graphql", tok("viewer"), `{"query": `); code != 400 {
		t.Errorf("truncated JSON: %d, want 400", code)
	}
	if _, errs := e.gql(tok("viewer"), `{ status { authEnabled } }`, nil); errs != nil {
		t.Errorf("after the hostile requests: %v", errs)
	}
}
