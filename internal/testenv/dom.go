package testenv

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// DOM is a parsed HTML document, for asserting what a page shows.
type DOM struct{ Root *html.Node }

// ParseDOM parses an HTML document (Chromium's --dump-dom output).
func ParseDOM(t testing.TB, doc string) DOM {
	t.Helper()
	n, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		t.Fatalf("parse DOM: %v", err)
	}
	return DOM{n}
}

// All returns the elements under d's root for which match is true.
func (d DOM) All(match func(n *html.Node) bool) []*html.Node {
	var out []*html.Node
	for n := range d.Root.Descendants() {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
	}
	return out
}

// Where matches elements with the given tag ("" for any) and attributes.
func Where(tag string, attrs ...string) func(*html.Node) bool {
	return func(n *html.Node) bool {
		if tag != "" && n.Data != tag {
			return false
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if v, ok := Attr(n, attrs[i]); !ok || v != attrs[i+1] {
				return false
			}
		}
		return true
	}
}

// Under returns the DOM rooted at n.
func Under(n *html.Node) DOM { return DOM{n} }

// Attr returns the attribute key of n.
func Attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

// HasClass reports whether n's class list has c.
func HasClass(n *html.Node, c string) bool {
	v, _ := Attr(n, "class")
	return slices.Contains(strings.Fields(v), c)
}

// Text is the text content of n.
func Text(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}
