package proxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

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
	const idle = 300 * time.Millisecond
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
		time.Sleep(idle / 3)
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
	waitFor(t, "IP back in the pool", func() bool {
		snap, _ := e.pool().Snapshot(t.Context())
		return snap[0].State != pool.StateInUse
	})
}
