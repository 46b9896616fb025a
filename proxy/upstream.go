package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Upstream is one upstream proxy IP of a target.
type Upstream struct {
	Addr     string // host:port, the pool's key for this IP
	Username string
	Password string
	Provider string
	Region   string
}

func (u Upstream) authHeader() string {
	if u.Username == "" && u.Password == "" {
		return ""
	}
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username+":"+u.Password))
}

// attemptError is why one attempt through one IP failed; Reason is a short
// word for logs, metrics and the client's JSON body.
type attemptError struct {
	Reason string
	Err    error
}

func (e *attemptError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *attemptError) Unwrap() error { return e.Err }

func failed(reason string, err error) error { return &attemptError{Reason: reason, Err: err} }

// reasonOf classifies a network error.
func reasonOf(stage string, err error) string {
	switch {
	case IsLocalError(err):
		return ReasonLocal
	case isTimeout(err), errors.Is(err, context.DeadlineExceeded):
		return stage + "_timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return stage + "_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return stage + "_reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return stage + "_closed"
	}
	return stage + "_error"
}

// connKey names a reusable upstream connection: the proxy IP, and for
// tunnelled (https) origins the origin it is tunnelled to.
type connKey struct {
	proxy  string
	origin string
}

// upConn is a connection to an upstream proxy (or through it, for TLS).
type upConn struct {
	net.Conn
	br          *bufio.Reader
	bw          *bufio.Writer
	key         connKey
	reused      bool
	idleSince   time.Time
	readTimeout time.Duration
	nread       int64 // bytes read since the current request was sent
	// The read and write deadlines roll forward with progress; they stay
	// set while the connection is idle (nothing reads or writes it then).
	readDL, writeDL rollingDeadline
}

// Read extends the read deadline as it goes, so a stalled upstream times
// out while a slow but moving download does not.
func (c *upConn) Read(p []byte) (int, error) {
	c.readDL.arm(c.Conn.SetReadDeadline, c.readTimeout)
	n, err := c.Conn.Read(p)
	c.nread += int64(n)
	return n, err
}

// Timeouts bound every upstream stage.
type Timeouts struct {
	Connect   time.Duration // TCP connect, CONNECT and TLS handshake
	Response  time.Duration // from request sent to response head, and between body reads
	IdleConns time.Duration // how long an idle upstream connection is kept
}

// transport owns one target's upstream connections. Idle connections are
// kept per IP, so reuse never changes the IP a request leaves through.
type transport struct {
	tls      *tls.Config
	timeouts Timeouts
	dialer   *net.Dialer
	maxIdle  int

	mu      sync.Mutex
	idle    map[connKey][]*upConn
	live    map[string]bool // proxy addresses whose connections are kept; nil: all
	retired bool            // no target uses t any more: keep nothing
}

func newTransport(tlsConf *tls.Config, t Timeouts, d *net.Dialer) *transport {
	return &transport{tls: tlsConf, timeouts: t, dialer: d, maxIdle: 16, idle: map[connKey][]*upConn{}}
}

// get returns an idle connection for key, or nil.
func (t *transport) get(key connKey) *upConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		list := t.idle[key]
		if len(list) == 0 {
			return nil
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1]
		if time.Since(c.idleSince) < t.timeouts.IdleConns {
			c.reused = true
			return c
		}
		c.Close()
	}
}

// put keeps c for reuse.
func (t *transport) put(c *upConn) {
	c.idleSince = time.Now()
	t.mu.Lock()
	if t.keeps(c.key) && len(t.idle[c.key]) < t.maxIdle {
		t.idle[c.key] = append(t.idle[c.key], c)
		c = nil
	}
	t.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// closeIdle closes every idle connection.
func (t *transport) closeIdle() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[connKey][]*upConn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.Close()
		}
	}
}

// dialProxy opens a TCP connection to the upstream proxy.
func (t *transport) dialProxy(ctx context.Context, up Upstream) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeouts.Connect)
	defer cancel()
	c, err := t.dialer.DialContext(ctx, "tcp", up.Addr)
	if err != nil {
		return nil, failed(reasonOf("connect", err), err)
	}
	return c, nil
}

// tunnel opens a CONNECT tunnel to hostport through up. The returned reader
// holds any bytes the proxy sent after its answer.
func (t *transport) tunnel(ctx context.Context, up Upstream, hostport string) (net.Conn, *bufio.Reader, error) {
	c, err := t.dialProxy(ctx, up)
	if err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(t.timeouts.Connect)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	bw := bufio.NewWriterSize(c, 512)
	fmt.Fprintf(bw, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", hostport, hostport)
	if a := up.authHeader(); a != "" {
		fmt.Fprintf(bw, "Proxy-Authorization: %s\r\n", a)
	}
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		c.Close()
		return nil, nil, failed(reasonOf("connect", err), err)
	}
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, nil, failed(reasonOf("connect", err), err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, nil, failed("connect_status_"+strconv.Itoa(resp.StatusCode),
			fmt.Errorf("upstream proxy refused CONNECT %s: %s", hostport, resp.Status))
	}
	_ = c.SetDeadline(time.Time{})
	return c, br, nil
}

// connFor returns a connection ready to carry a request to origin through
// up: for http origins a plain connection to the proxy (absolute-form), for
// https origins a TLS session inside a CONNECT tunnel.
func (t *transport) connFor(ctx context.Context, up Upstream, scheme, hostport, serverName string, fresh bool) (*upConn, error) {
	key := connKey{proxy: up.Addr}
	if scheme == "https" {
		key.origin = hostport
	}
	if !fresh {
		if c := t.get(key); c != nil {
			return c, nil
		}
	}
	return t.dial(ctx, up, key, scheme, hostport, serverName)
}

func (t *transport) dial(ctx context.Context, up Upstream, key connKey, scheme, hostport, serverName string) (*upConn, error) {
	if scheme != "https" {
		c, err := t.dialProxy(ctx, up)
		if err != nil {
			return nil, err
		}
		return t.wrap(c, nil, key), nil
	}
	raw, br, err := t.tunnel(ctx, up, hostport)
	if err != nil {
		return nil, err
	}
	if br.Buffered() > 0 {
		raw.Close()
		return nil, failed("connect_error", errors.New("upstream proxy sent data before the TLS handshake"))
	}
	conf := t.tls.Clone()
	conf.ServerName = serverName
	conf.NextProtos = []string{"http/1.1"}
	tc := tls.Client(raw, conf)
	hctx, cancel := context.WithTimeout(ctx, t.timeouts.Connect)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, failed("tls_error", fmt.Errorf("tls handshake with %s: %w", hostport, err))
	}
	return t.wrap(tc, nil, key), nil
}

func (t *transport) wrap(c net.Conn, br *bufio.Reader, key connKey) *upConn {
	uc := &upConn{Conn: c, key: key, readTimeout: t.timeouts.Response}
	if br == nil {
		br = bufio.NewReaderSize(uc, 16<<10)
	}
	uc.br = br
	uc.bw = bufio.NewWriterSize(c, 16<<10)
	return uc
}
