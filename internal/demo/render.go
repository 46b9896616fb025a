package demo

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/proxy-hopper/proxy-hopper/pool"
)

// ANSI sequences for the live table.
const (
	ansiHome       = "\x1b[H"
	ansiClear      = "\x1b[2J"
	ansiClearLine  = "\x1b[K"
	ansiClearBelow = "\x1b[J"
	ansiHideCursor = "\x1b[?25l"
	ansiShowCursor = "\x1b[?25h"
)

// isTerminal reports whether w is a character device (a terminal), without
// pulling in x/term.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	return fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}

// header describes the set-up, shown above every table.
type header struct {
	agent, origin, target string
	clients               int
	duration              time.Duration
	policy                string
	elapsed               time.Duration // shown instead of the time since start, when set
}

// table renders the live per-IP table and its totals line.
func (c *collector) table(now time.Time, h header) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	elapsed := now.Sub(c.start)
	if h.elapsed > 0 {
		elapsed = h.elapsed
	}
	elapsed = elapsed.Truncate(100 * time.Millisecond)
	fmt.Fprintf(&b, "proxy-hopper demo   %s / %s   agent %s → origin %s   %d clients\n",
		fmtSecs(elapsed), fmtSecs(h.duration), h.agent, h.origin, h.clients)
	fmt.Fprintf(&b, "target %q: %s\n\n", h.target, h.policy)
	fmt.Fprintf(&b, "%-21s %-8s %6s %6s %8s  %-19s %5s  %s\n",
		"UPSTREAM", "ROLE", "TRIES", "FAILS", "P50", "STATE", "QUAR", "LAST FAILURE")
	for _, s := range c.ips {
		fmt.Fprintf(&b, "%-21s %-8s %6d %6d %8s  %-19s %5d  %s\n",
			s.Addr, s.Role, s.Attempts, s.Failures, fmtDur(s.P50()), stateText(s, now), s.Quarantines, s.LastReason)
	}
	fmt.Fprintf(&b, "\nrequests %d (%.1f/s)   %s   retries %d   waiting for an IP %d   client errors %d\n",
		c.responses, c.rate(2*time.Second), statusMix(c.statuses), c.retries, c.waiting, c.clientErrors)
	return b.String()
}

func stateText(s *ipStats, now time.Time) string {
	switch s.State {
	case pool.StateQuarantined:
		if left := s.Until.Sub(now); left > 0 {
			return fmt.Sprintf("quarantined %4.1fs", left.Seconds())
		}
	case pool.StateCooling:
		if left := s.Until.Sub(now); left > 0 {
			return fmt.Sprintf("cooling %dms", left.Milliseconds())
		}
		return string(pool.StateAvailable)
	}
	return string(s.State)
}

// summary is printed once at the end.
func (c *collector) summary(elapsed time.Duration, interrupted bool, originHits int64, logPath string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	how := "after"
	if interrupted {
		how = "interrupted after"
	}
	secs := max(elapsed.Seconds(), 0.001)
	fmt.Fprintf(&b, "\n== Summary (%s %s) ==\n", how, fmtSecs(elapsed.Truncate(100*time.Millisecond)))
	fmt.Fprintf(&b, "  client requests   %d answered (%.1f/s)", c.responses, float64(c.responses)/secs)
	if c.canceled > 0 {
		fmt.Fprintf(&b, ", %d more given up by the clients at the end (the agent still finished them)", c.canceled)
	}
	fmt.Fprintf(&b, "\n  successes         %d (200 from the origin; origin served %d)\n", c.successes, originHits)
	fmt.Fprintf(&b, "  retries           %d (%d request(s) needed another IP)\n", c.retries, c.retriedReqs)
	fmt.Fprintf(&b, "  statuses          %s\n", statusMix(c.statuses))
	fmt.Fprintf(&b, "  client errors     %d\n", c.clientErrors)
	for _, e := range c.errorSamples {
		fmt.Fprintf(&b, "                    %s\n", e)
	}
	fmt.Fprintf(&b, "  client latency    p50 %s, p99 %s (includes waiting for a free IP: p50 %s)\n",
		fmtDur(percentile(c.clientLatency, 0.5)), fmtDur(percentile(c.clientLatency, 0.99)), fmtDur(percentile(c.agentQueueWait, 0.5)))

	served := 0
	for _, s := range c.ips {
		served += s.OK()
	}
	fmt.Fprintf(&b, "\n  share of the %d successful attempts, per upstream IP:\n", served)
	for _, s := range c.ips {
		share := 0.0
		if served > 0 {
			share = 100 * float64(s.OK()) / float64(served)
		}
		fmt.Fprintf(&b, "    %-21s %-8s %5.1f%%  %-25s %d tries, %d failed\n",
			s.Addr, s.Role, share, strings.Repeat("█", int(share/4+0.5)), s.Attempts, s.Failures)
	}
	b.WriteString("\n")
	for _, s := range c.ips {
		switch s.Role {
		case roleDead:
			fmt.Fprintf(&b, "  dead IP %s: %d attempts, %d failed (%s); quarantined %d time(s), released %d time(s)",
				s.Addr, s.Attempts, s.Failures, reasons(s.Reasons), s.Quarantines, s.Releases)
			if len(s.QuarantAt) > 0 {
				at := make([]string, len(s.QuarantAt))
				for i, d := range s.QuarantAt {
					at[i] = "+" + fmtSecs(d.Truncate(100*time.Millisecond))
				}
				fmt.Fprintf(&b, "\n    quarantined at %s; while out, its requests went to the other IPs", strings.Join(at, ", "))
			}
			b.WriteString("\n")
		case role429:
			fmt.Fprintf(&b, "  429 IP %s: %d of %d attempts rate-limited (%s), each retried on another IP; quarantined %d time(s), as a success in between resets its count\n",
				s.Addr, s.Reasons["status_429"], s.Attempts, reasons(s.Reasons), s.Quarantines)
		case roleSlow:
			fmt.Fprintf(&b, "  slow IP %s: p50 %s against %s for the healthy IPs; it still took its turn in the rotation\n",
				s.Addr, fmtDur(s.P50()), fmtDur(c.healthyP50()))
		}
	}
	if logPath != "" {
		fmt.Fprintf(&b, "\n  agent log: %s\n", logPath)
	}
	return b.String()
}

func (c *collector) healthyP50() time.Duration {
	var all []time.Duration
	for _, s := range c.ips {
		if s.Role == roleHealthy {
			all = append(all, s.okDurations...)
		}
	}
	return percentile(all, 0.5)
}

// statusMix is "200: 120  429: 2", in status order.
func statusMix(m map[int]int) string {
	if len(m) == 0 {
		return "no responses yet"
	}
	codes := make([]int, 0, len(m))
	for k := range m {
		codes = append(codes, k)
	}
	slices.Sort(codes)
	parts := make([]string, len(codes))
	for i, k := range codes {
		parts[i] = fmt.Sprintf("%d: %d", k, m[k])
	}
	return strings.Join(parts, "  ")
}

// reasons is "connect_refused ×4, status_429 ×1", most frequent first.
func reasons(m map[string]int) string {
	if len(m) == 0 {
		return "no failures"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return fmtSecs(d)
}

func fmtSecs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
