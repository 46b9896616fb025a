// Package benchutil holds what the benchmark harnesses under scripts/
// share: reading wrk's report and taking medians.
package benchutil

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// Wrk is what one wrk run reported.
type Wrk struct {
	RPS      float64
	P50, P99 time.Duration // zero unless wrk ran with --latency
	Requests int           // requests completed
	// SocketErrors is the sum of wrk's socket error counts, and
	// SocketErrorsLine its line ("" when there were none).
	SocketErrors     int
	SocketErrorsLine string
	Non2xx           int // non-2xx/3xx responses
}

var (
	reRPS      = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	reLatency  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
	reErrors   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reRequests = regexp.MustCompile(`(\d+) requests in`)
	units      = map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9}
)

// ParseWrk reads wrk's report; it fails when the report has no
// Requests/sec line.
func ParseWrk(out string) (Wrk, error) {
	var r Wrk
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	var err error
	if r.RPS, err = strconv.ParseFloat(m[1], 64); err != nil {
		return r, fmt.Errorf("wrk Requests/sec %q: %w", m[1], err)
	}
	for _, m := range reLatency.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		d := time.Duration(v * units[m[3]])
		if m[1] == "50" {
			r.P50 = d
		} else {
			r.P99 = d
		}
	}
	if m := reErrors.FindStringSubmatch(out); m != nil {
		r.SocketErrorsLine = m[0]
		for _, x := range m[1:] {
			n, _ := strconv.Atoi(x)
			r.SocketErrors += n
		}
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.Atoi(m[1])
	}
	if m := reRequests.FindStringSubmatch(out); m != nil {
		r.Requests, _ = strconv.Atoi(m[1])
	}
	return r, nil
}

// Median is the median of v (0 for none); v is left as it is.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// CopyPlain copies src to dst with plain reads and writes (never splice(2),
// which would skip data the sk_msg fast path put in a receive queue) until
// either side fails or src ends.
func CopyPlain(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// WaitLog waits until the file at path contains want (an agent's log line
// saying it is up).
func WaitLog(path, want string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(want)) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	return fmt.Errorf("agent did not log %q:\n%s", want, b)
}

// WaitListening waits until addr accepts TCP connections.
func WaitListening(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after %s", addr, within)
}
