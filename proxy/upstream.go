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
	// headLeft, while limitHead is set, is how many more bytes may be read
	// before the response head must have ended.
	headLeft  int
	limitHead bool
	// The read and write deadlines roll forward with progress; they stay
	// set while the connection is idle (nothing reads or writes it then).
	readDL, writeDL rollingDeadline
}

// Read extends the read deadline as it goes, so a stalled upstream times
// out while a slow but moving download does not.
// While a response head is read it also enforces the head's size limit.
func (c *upConn) Read(p []byte) (int, error) {
	if c.limitHead {
		if c.headLeft <= 0 {
			return 0, errRespHeadTooLarge
		}
		if len(p) > c.headLeft {
			p = p[:c.headLeft]
		}
	}
	c.readDL.arm(c.Conn.SetReadDeadline, c.readTimeout)
	n, err := c.Conn.Read(p)
	c.nread += int64(n)
	if c.limitHead {
		c.headLeft -= n
	}
	return n, err
}

// errRespHeadTooLarge is a response head (CONNECT reply, proxy answer or
// origin answer) over the size or field limit.
var errRespHeadTooLarge = errors.New("response head too large")

// maxRespHeadFields bounds the header fields of a response head, as
// ReadRequestHead does for requests.
const maxRespHeadFields = 1000

// headLimiter reads from r until left bytes have been read, then fails
// with errRespHeadTooLarge: it bounds what a response head reader (which
// has no limit of its own) can consume.
type headLimiter struct {
	r    io.Reader
	left int
}

func (l *headLimiter) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errRespHeadTooLarge
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

// checkRespFields fails when h has more than maxRespHeadFields values.
func checkRespFields(h http.Header) error {
	n := 0
	for _, v := range h {
		n += len(v)
	}
	if n > maxRespHeadFields {
		return errRespHeadTooLarge
	}
	return nil
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
	maxHead  int // bytes of a response head (CONNECT reply, answer)

	// Readers and writers of connections in use; kept connections give
	// theirs back while idle.
	rbufs, wbufs sync.Pool

	mu      sync.Mutex
	idle    map[connKey][]*upConn
	live    map[string]bool // proxy addresses whose connections are kept; nil: all
	retired bool            // no target uses t any more: keep nothing
}

func newTransport(tlsConf *tls.Config, t Timeouts, d *net.Dialer, maxHead int) *transport {
	if maxHead <= 0 {
		maxHead = 64 << 10
	}
	return &transport{tls: tlsConf, timeouts: t, dialer: d, maxIdle: 16, maxHead: maxHead, idle: map[connKey][]*upConn{}}
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
			t.attachBufs(c)
			return c
		}
		c.Close()
	}
}

// put keeps c for reuse, without its buffers.
func (t *transport) put(c *upConn) {
	if c.br.Buffered() > 0 || c.bw.Buffered() > 0 {
		c.Close() // out of step with its peer
		return
	}
	c.br.Reset(nil)
	c.bw.Reset(nil)
	t.rbufs.Put(c.br)
	t.wbufs.Put(c.bw)
	c.br, c.bw = nil, nil
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

// tunnel opens a CONNECT tunnel to hostport through up. It also returns
// any bytes the proxy sent after its answer (nil when none): the reader
// of the answer is dropped, so an open tunnel holds no buffer.
func (t *transport) tunnel(ctx context.Context, up Upstream, hostport string) (net.Conn, []byte, error) {
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
	// The reply's head is bounded like a request head; a proxy that sends
	// more is at fault (the attempt counts against its IP).
	br := bufio.NewReaderSize(&headLimiter{r: c, left: t.maxHead}, 1024)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err == nil {
		err = checkRespFields(resp.Header)
	}
	if errors.Is(err, errRespHeadTooLarge) {
		c.Close()
		return nil, nil, failed("connect_head_too_large",
			fmt.Errorf("upstream proxy's CONNECT reply exceeds %d bytes or %d fields: %w", t.maxHead, maxRespHeadFields, err))
	}
	if err != nil {
		c.Close()
		return nil, nil, failed(reasonOf("connect", err), err)
	}
	// A refusal's body is not read: the connection is closed instead.
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, nil, failed("connect_status_"+strconv.Itoa(resp.StatusCode),
			fmt.Errorf("upstream proxy refused CONNECT %s: %s", hostport, resp.Status))
	}
	_ = c.SetDeadline(time.Time{})
	var pre []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		pre = append([]byte(nil), b...)
	}
	return c, pre, nil
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
		return t.wrap(c, key), nil
	}
	raw, pre, err := t.tunnel(ctx, up, hostport)
	if err != nil {
		return nil, err
	}
	if len(pre) > 0 {
		raw.Close()
		return nil, failed("connect_error", errors.New("upstream proxy sent data before the TLS handshake"))
	}
	tc, err := t.originTLS(ctx, raw, hostport, serverName)
	if err != nil {
		return nil, err
	}
	return t.wrap(tc, key), nil
}

// originTLS runs TLS with an https origin over raw (a tunnel to it),
// verified with the target's config and offering http/1.1 only; raw is
// closed when it fails. A certificate that fails verification is reason
// ReasonOriginCertificate, any other failure tls_error.
func (t *transport) originTLS(ctx context.Context, raw net.Conn, hostport, serverName string) (*tls.Conn, error) {
	conf := t.tls.Clone()
	conf.ServerName = serverName
	conf.NextProtos = []string{"http/1.1"}
	tc := tls.Client(raw, conf)
	hctx, cancel := context.WithTimeout(ctx, t.timeouts.Connect)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			return nil, failed(ReasonOriginCertificate, fmt.Errorf("tls handshake with %s: %w", hostport, err))
		}
		return nil, failed("tls_error", fmt.Errorf("tls handshake with %s: %w", hostport, err))
	}
	return tc, nil
}

func (t *transport) wrap(c net.Conn, key connKey) *upConn {
	uc := &upConn{Conn: c, key: key, readTimeout: t.timeouts.Response}
	t.attachBufs(uc)
	return uc
}

// attachBufs gives c a reader and a writer from the pools.
func (t *transport) attachBufs(c *upConn) {
	br, _ := t.rbufs.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(nil, 16<<10)
	}
	br.Reset(c)
	bw, _ := t.wbufs.Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(nil, 16<<10)
	}
	bw.Reset(c.Conn)
	c.br, c.bw = br, bw
}

func tlsOrDefault(c *tls.Config) *tls.Config {
	if c != nil {
		return c
	}
	return &tls.Config{MinVersion: tls.VersionTLS12}
}

// roundTrip sends one request through up and returns the response head.
// A reused connection that turns out to be dead is replaced once, silently:
// that is the connection's fault, not the IP's.
func (t *transport) roundTrip(ctx context.Context, up Upstream, req *request, body *requestBody) (*http.Response, *upConn, error) {
	hp := hostPort(req.url)
	for try := 0; ; try++ {
		// A streamed body cannot be sent twice, so it never risks a kept
		// connection the proxy may have closed meanwhile.
		uc, err := t.connFor(ctx, up, req.url.Scheme, hp, req.url.Hostname(), !body.Replayable())
		if err != nil {
			return nil, nil, err
		}
		stop := context.AfterFunc(ctx, func() { _ = uc.Conn.SetDeadline(time.Unix(1, 0)) })
		uc.writeDL.arm(uc.Conn.SetWriteDeadline, t.timeouts.Response)
		uc.nread = int64(uc.br.Buffered())
		err = writeRequest(uc.bw, req, up, body)
		var resp *http.Response
		if err == nil {
			// Interim and final heads together stay within maxHead.
			uc.limitHead, uc.headLeft = true, t.maxHead-uc.br.Buffered()
			resp, err = readResponse(uc.br, req.head.Method)
			uc.limitHead = false
		}
		if !stop() && err == nil {
			// The context ended meanwhile and its deadline poisoned the
			// connection: it must not be reused.
			err = ctx.Err()
		}
		if err == nil {
			return resp, uc, nil
		}
		uc.Close()
		// A kept connection the proxy closed meanwhile: nothing of a
		// response arrived, so the request can go again on a fresh one.
		if uc.reused && try == 0 && uc.nread == 0 && (body.Replayable() || !body.used) && staleConn(err) {
			continue
		}
		if errors.Is(err, errRespHeadTooLarge) {
			// Plain http: the answer comes from the proxy, which is at
			// fault. https: the origin sent it inside the tunnel.
			reason := "upstream_head_too_large"
			if req.url.Scheme == "https" {
				reason = reasonOriginHeadTooLarge
			}
			return nil, nil, failed(reason, fmt.Errorf("response head exceeds %d bytes or %d fields: %w", t.maxHead, maxRespHeadFields, err))
		}
		return nil, nil, failed(reasonOf("upstream", err), err)
	}
}

// reasonOriginHeadTooLarge is an https origin's response head over the
// limit: the origin's fault, not the IP's, and the same on every IP.
const reasonOriginHeadTooLarge = "origin_head_too_large"

func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || reasonOf("", err) == "_reset"
}
