package proxy

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

func TestSmokeHeaderMode(t *testing.T) {
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 3})
	for i := 0; i < 6; i++ {
		resp, body := e.headerGet(t, o.URL+"/base", "/v1/x?q=1", nil)
		if resp.StatusCode != 200 || body != "GET /base/v1/x?q=1" {
			b, _ := os.ReadFile(e.upstream[0].Log)
			t.Fatalf("got %d %q\n%s", resp.StatusCode, body, b)
		}
	}
	for _, up := range e.upstream {
		reqs := up.Requests(t)
		if len(reqs) != 2 {
			t.Errorf("upstream %s served %d requests: %v", up.Addr, len(reqs), reqs)
		}
		for _, r := range reqs {
			if !strings.Contains(r, "/base/v1/x?q=1") {
				t.Errorf("unexpected request %q", r)
			}
		}
	}
}

func TestSmokeHTTPSAndConnect(t *testing.T) {
	o := newOrigin(t, true, nil)
	e := newEnv(t, envOptions{upstreams: 2, tls: caOf(o)})
	resp, body := e.headerGet(t, o.URL, "/secure?a=b", nil)
	if resp.StatusCode != 200 || body != "GET /secure?a=b" {
		t.Fatalf("header https: %d %q", resp.StatusCode, body)
	}
	c := e.proxyClient()
	c.Transport.(*http.Transport).TLSClientConfig = caOf(o)
	for i := 0; i < 3; i++ {
		r, err := c.Get(o.URL + "/tunnel")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if string(b) != "GET /tunnel" {
			t.Fatalf("tunnel body %q", b)
		}
	}
	po := newOrigin(t, false, nil)
	r, err := c.Get(po.URL + "/plain")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	if string(b) != "GET /plain" {
		t.Fatalf("explicit body %q", b)
	}
}
