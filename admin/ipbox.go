package admin

import (
	"html"
	"html/template"
	"strconv"
	"strings"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// ipBoxes renders the IP boxes of target t, as the page's script draws
// them. It is plain Go rather than template actions: html/template's
// escapers cost tens of microseconds per box, which a page of hundreds
// of IPs feels. Every value from outside (address, provider, region,
// reason, target, probe result) goes through html.EscapeString, which
// makes it safe as text and inside a double-quoted attribute; the rest
// are numbers and fixed strings.
func ipBoxes(t string, ips []IPView, canWrite bool) template.HTML {
	var b strings.Builder
	b.Grow(len(ips) * 700)
	esc := html.EscapeString
	et := esc(t)
	for i := range ips {
		ip := &ips[i]
		st := esc(string(ip.State))
		addr := esc(ip.Address)
		b.WriteString(`<div class="ip state-`)
		b.WriteString(st)
		if ip.Draining {
			b.WriteString(` draining`)
		}
		b.WriteString(`" data-ip="`)
		b.WriteString(addr)
		b.WriteString(`" data-state="`)
		b.WriteString(st)
		b.WriteString(`" data-requests="`)
		b.WriteString(strconv.FormatUint(ip.Requests, 10))
		b.WriteString(`" data-failures="`)
		b.WriteString(strconv.Itoa(ip.ConsecutiveFailures))
		b.WriteString(`"`)
		if ip.QuarantineReason != "" {
			b.WriteString(` data-reason="`)
			b.WriteString(esc(ip.QuarantineReason))
			b.WriteString(`"`)
		}
		b.WriteString(` style="background-color: `)
		b.WriteString(stateColours[ip.State]) // fixed colours, or empty
		b.WriteString("\">\n<div class=\"addr\">")
		b.WriteString(addr)
		b.WriteString("</div>\n<div class=\"state\">")
		b.WriteString(st)
		if ip.Draining {
			b.WriteString(` (draining)`)
		}
		if !ip.ReleaseAt.IsZero() {
			b.WriteString(` until `)
			b.WriteString(ip.ReleaseAt.UTC().Format("15:04:05"))
		}
		if !ip.QuarantinePendingUntil.IsZero() {
			b.WriteString(`, quarantine pending`)
		}
		b.WriteString("</div>\n")
		if ip.State == pool.StateQuarantined {
			b.WriteString(`<div class="reason">`)
			b.WriteString(esc(ip.ReasonText))
			b.WriteString("</div>\n")
		}
		b.WriteString(`<div class="requests">`)
		b.WriteString(strconv.FormatUint(ip.Requests, 10))
		b.WriteString(` req, `)
		b.WriteString(strconv.Itoa(ip.ConsecutiveFailures))
		b.WriteString(" consecutive failures</div>\n<div class=\"probe\">")
		if p := ip.Probe; p != nil {
			b.WriteString(`probe `)
			b.WriteString(esc(p.Result))
			b.WriteString(` `)
			b.WriteString(strconv.FormatFloat(p.LatencyMs, 'f', 0, 64))
			b.WriteString(` ms`)
		} else {
			b.WriteString(`no probe yet`)
		}
		b.WriteString("</div>\n")
		if c := ip.Bytes; c != nil {
			b.WriteString(`<div class="bytes" data-in="`)
			b.WriteString(strconv.FormatUint(c.In, 10))
			b.WriteString(`" data-out="`)
			b.WriteString(strconv.FormatUint(c.Out, 10))
			b.WriteString(`">in `)
			b.WriteString(bytesText(c.In))
			b.WriteString(`, out `)
			b.WriteString(bytesText(c.Out))
			b.WriteString("</div>\n")
		}
		if ip.Provider != "" || ip.Region != "" {
			b.WriteString(`<div class="provider">`)
			b.WriteString(esc(ip.Provider))
			if ip.Region != "" {
				b.WriteString(` / `)
				b.WriteString(esc(ip.Region))
			}
			b.WriteString("</div>\n")
		}
		if canWrite {
			b.WriteString(`<div class="acts">`)
			action := "quarantine"
			if ip.State == pool.StateQuarantined || !ip.QuarantinePendingUntil.IsZero() {
				action = "release"
			}
			button(&b, action, et, addr)
			if !ip.Draining {
				button(&b, "remove", et, addr)
			}
			b.WriteString("</div>\n")
		}
		b.WriteString("</div>\n")
	}
	return template.HTML(b.String()) // #nosec: built from escaped values above
}

// button writes an action button; target and addr are escaped already.
func button(b *strings.Builder, action, target, addr string) {
	b.WriteString(`<button type="button" data-action="`)
	b.WriteString(action)
	b.WriteString(`" data-target="`)
	b.WriteString(target)
	b.WriteString(`" data-ip="`)
	b.WriteString(addr)
	b.WriteString(`">`)
	b.WriteString(action)
	b.WriteString(`</button>`)
}
