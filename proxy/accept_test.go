package proxy

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// failingListener is a real listener whose first fail Accepts fail as they
// do when the process is out of file descriptors (EMFILE).
type failingListener struct {
	net.Listener
	fail atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fail.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptErrorsLogRateLimited has Accept fail with EMFILE six times in
// a row: the server retries each time, but the log gets RequestLogBurst
// "accept failed" lines and one summary of the rest, not a line per retry;
// then the listener serves a real client again.
func TestAcceptErrorsLogRateLimited(t *testing.T) {
	const burst, fails = 2, 6
	buf := &lockedBuffer{}
	srv := New(nil, Options{
		Logger:             slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})),
		RequestLogBurst:    burst,
		RequestLogInterval: time.Hour, // the summary comes from Flush below
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &failingListener{Listener: l}
	fl.fail.Store(fails)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(fl) }()
	t.Cleanup(func() {
		_ = srv.Shutdown(t.Context())
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v, want ErrServerClosed", err)
		}
	})

	// Served once every failure was retried (the backoff adds up to 315ms).
	if got := statusLine(rawRequest(t, l.Addr().String(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n")); !strings.Contains(got, " 400 ") {
		t.Fatalf("request after the accept errors: %q, want 400 (no target header)", got)
	}
	if n := fl.fail.Load(); n >= 0 {
		t.Fatalf("%d accept errors left unretried", n+1)
	}
	count := func() (failed int, sums []map[string]any) {
		for _, ln := range buf.lines(t) {
			switch ln["msg"] {
			case "accept failed; retrying":
				failed++
				if ln["level"] != "WARN" || !strings.Contains(ln["err"].(string), "too many open files") {
					t.Errorf("accept line %v: want WARN with the error", ln)
				}
			case "log lines suppressed":
				sums = append(sums, ln)
			}
		}
		return failed, sums
	}
	if failed, _ := count(); failed != burst {
		t.Errorf("%d \"accept failed\" lines for %d failed accepts, want %d", failed, fails, burst)
	}
	srv.acceptLog.Flush()
	_, sums := count()
	if len(sums) != 1 || sums[0]["what"] != "accept" || sums[0]["suppressed"] != float64(fails-burst) || sums[0]["suppressed_message"] != "accept failed; retrying" {
		t.Errorf("summaries = %v, want one for accept with %d suppressed", sums, fails-burst)
	}
}
