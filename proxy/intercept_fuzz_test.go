package proxy

import (
	"bufio"
	"strings"
	"testing"
)

// FuzzInterceptedURL: whatever request head an intercepted client sends,
// the URL it is served at is https on the connection's own host and
// port, or the request is refused; it never panics.
func FuzzInterceptedURL(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: SHOP.example.com.:443\r\n\r\n",
		"GET https://shop.example.com/x HTTP/1.1\r\n\r\n",
		"GET https://evil.example/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET //evil.example/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: shop.example.com@evil.example\r\n\r\n",
		"GET * HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET http://shop.example.com/ HTTP/1.1\r\n\r\n",
		"GET /%2e%2e/x HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
	} {
		f.Add(s)
	}
	ic := &interception{authority: "shop.example.com:443", host: "shop.example.com", port: 443, mode: "connect"}
	f.Fuzz(func(t *testing.T, raw string) {
		h, err := ReadRequestHead(bufio.NewReader(strings.NewReader(raw)), 8<<10)
		if err != nil {
			return
		}
		u, status, err := interceptedURL(h, ic)
		if err != nil {
			if u != nil || (status != 400 && status != 421) {
				t.Fatalf("status %d for %v", status, err)
			}
			return
		}
		if u.Scheme != "https" || u.Host != "shop.example.com" || u.User != nil {
			t.Fatalf("%q served at %s", raw, u)
		}
	})
}
