package admin

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// TestIPBoxesEscape: hostile strings in every field of an IP box come out
// as text and attribute values, never markup, and the attributes carry
// them exactly.
func TestIPBoxesEscape(t *testing.T) {
	evil := `"><img src=x onerror=alert(1)><script>alert(2)</script>'&`
	ips := []IPView{{
		Address: evil, State: pool.StateQuarantined, QuarantineReason: evil, ReasonText: evil,
		Provider: evil, Region: evil, ReleaseAt: time.Unix(0, 0), Requests: 3, ConsecutiveFailures: 2,
		Probe: &ProbeView{Result: evil, LatencyMs: 12}, Bytes: &ByteCounts{In: 2048, Out: 5},
	}}
	out := string(ipBoxes(evil, ips, true))
	doc, err := html.Parse(strings.NewReader("<div>" + out + "</div>"))
	if err != nil {
		t.Fatal(err)
	}
	var elems, buttons int
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "img", "script":
				t.Errorf("injected <%s>", n.Data)
			case "div":
				elems++
			case "button":
				buttons++
			}
			for _, a := range n.Attr {
				if strings.HasPrefix(a.Key, "on") {
					t.Errorf("event handler attribute %s", a.Key)
				}
				if (a.Key == "data-ip" || a.Key == "data-reason" || a.Key == "data-target") && a.Val != evil {
					t.Errorf("%s = %q, want the value itself", a.Key, a.Val)
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	// The wrapper, the box, addr, state, reason, requests, probe, bytes, provider, acts.
	if elems != 10 || buttons != 2 {
		t.Errorf("%d divs and %d buttons, want 10 and 2:\n%s", elems, buttons, out)
	}
	for _, want := range []string{"in 2.0 KiB, out 5 B", "3 req, 2 consecutive failures", "probe &#34;&gt;&lt;img", `data-action="release"`, `data-action="remove"`} {
		if !strings.Contains(out, want) {
			t.Errorf("box lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(ipBoxes("t", ips, false)), "<button") {
		t.Error("buttons for a session that may not write")
	}
}
