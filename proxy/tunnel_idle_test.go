package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/proxy-hopper/proxy-hopper/internal/testenv"
	"github.com/proxy-hopper/proxy-hopper/pool"
)

// A tunnel with no byte moving either way for TunnelIdleTimeout is closed
// and its IP goes back to the pool; a tunnel in use is not.
func TestTunnelIdleTimeout(t *testing.T) {
	origin := tcpOrigin(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, line)
		}
	})
	// Long enough that a loaded machine (race detector, parallel tests)
	// never goes a whole idle period between two echoes (300ms did, once).
	const idle = time.Second
	e := newEnv(t, envOptions{upstreams: 1, opts: Options{TunnelIdleTimeout: idle}})
	c, br := e.dialConnect(t, origin)
	// Busy for well over the idle timeout: stays open.
	var lastByte time.Time
	for i := 0; i < 8; i++ {
		io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("echo %d: %q %v", i, line, err)
		}
		lastByte = time.Now()
		time.Sleep(idle / 5)
	}
	snap, _ := e.pool().Snapshot(t.Context())
	if snap[0].State != pool.StateInUse {
		t.Fatalf("IP state %s during the tunnel, want in-use", snap[0].State)
	}
	// Quiet: closed about the idle timeout after the last byte, IP released.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatalf("tunnel still delivering data")
	}
	if d := time.Since(lastByte); d < idle || d > idle+2*time.Second {
		t.Errorf("idle tunnel closed after %s, want about %s", d, idle)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		snap, _ := e.pool().Snapshot(t.Context())
		if snap[0].State == pool.StateInUse {
			return errors.New("still waiting for IP back in the pool")
		}
		return nil
	})
}

// TestTunnelBytes checks the byte counts a CONNECT tunnel reports: what the
// client sent through it and what came back, the CONNECT exchange excluded.
func TestTunnelBytes(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false, nil)
	e := newEnv(t, envOptions{upstreams: 1, quiet: true})
	host := strings.TrimPrefix(o.URL, "http://")
	req := "POST /bytes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4000\r\n\r\n" + strings.Repeat("z", 4000)
	// No half-close from the client: tinyproxy ends the whole tunnel on it.
	// The origin closes after its answer (Connection: close).
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+host+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n"+req); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close() // the tunnel ends when both directions have
	out := string(b)
	head, rest, ok := strings.Cut(out, "\r\n\r\n")
	if !ok || !strings.Contains(head, " 200 ") || !strings.HasSuffix(rest, "POST /bytes") {
		t.Fatalf("tunnel answer: %q", out)
	}
	ev := e.requestsN(t, 1)[0]
	if ev.Mode != "connect" || ev.BytesUp != int64(len(req)) || ev.BytesDown != int64(len(rest)) {
		t.Errorf("event %+v: want connect with BytesUp %d, BytesDown %d", ev, len(req), len(rest))
	}
}
