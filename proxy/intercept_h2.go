package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/net/http2"
)

// HTTP/2 on intercepted connections: Go's HTTP/2 server (x/net/http2)
// frames the connection, and each stream is served by the same request
// path as every other request (handleIntercepted, serveRequest), on an
// in-memory connection: the stream's head becomes a RequestHead, its body
// is copied into the connection with HTTP/1.1 framing, the origin's answer
// goes straight to the stream (h2Out), and the agent's own answers (JSON
// errors), written to the connection as HTTP/1.1, are read back and sent
// as the stream's response. A stream the client resets closes the body's
// pipe: the request path sees its client gone, as when an HTTP/1.1 client
// hangs up.

// maxH2Streams bounds the streams one client connection has open at once
// (each also counts against the client's request limit).
const maxH2Streams = 100

// serveH2 serves an intercepted connection that negotiated h2 until it
// ends. The connection counts as idle while no stream is open, so a
// shutdown closes it as it closes idle HTTP/1.1 connections.
func (s *Server) serveH2(nc *clientConn) {
	var open atomic.Int32
	nc.state.Store(stateIdle)
	srv := &http2.Server{
		MaxConcurrentStreams: maxH2Streams,
		IdleTimeout:          s.opts.IdleTimeout,
	}
	base := &http.Server{MaxHeaderBytes: s.opts.MaxHeaderBytes, ReadHeaderTimeout: s.opts.HeaderTimeout}
	srv.ServeConn(nc.c, &http2.ServeConnOpts{
		Context:    s.ctx,
		BaseConfig: base,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if open.Add(1) == 1 {
				nc.state.Store(stateActive)
			}
			defer func() {
				if open.Add(-1) == 0 {
					nc.state.Store(stateIdle)
				}
			}()
			s.serveStream(nc, w, r)
		}),
	})
}

// maxStreamAnswer bounds what the request path may write to a stream's
// in-memory connection: the agent's own answers (JSON errors), never an
// origin's (h2Out takes those straight to the stream).
const maxStreamAnswer = 1 << 20

// streamConn is one stream's in-memory connection, which the request path
// sees as its client: it reads the request body from the pipe the stream's
// body is copied into (and EOF once the stream is reset), takes what the
// agent answers itself into a buffer, and has the client connection's
// addresses.
type streamConn struct {
	net.Conn // the agent's end of the body pipe: reads and deadlines
	outer    net.Conn
	answer   bytes.Buffer
}

func (c *streamConn) RemoteAddr() net.Addr { return c.outer.RemoteAddr() }
func (c *streamConn) LocalAddr() net.Addr  { return c.outer.LocalAddr() }

func (c *streamConn) Write(p []byte) (int, error) {
	if c.answer.Len()+len(p) > maxStreamAnswer {
		return 0, errors.New("stream answer too large")
	}
	return c.answer.Write(p)
}

// serveStream serves one HTTP/2 stream through the request path.
func (s *Server) serveStream(nc *clientConn, w http.ResponseWriter, r *http.Request) {
	head, herr := h2Head(r, s.opts.MaxHeaderBytes)
	if herr != nil {
		h2Error(w, herr.Status, "bad_request", herr.Reason)
		return
	}
	agentEnd, bodyEnd := net.Pipe()
	defer agentEnd.Close()
	out := &h2Out{w: w}
	sc := &streamConn{Conn: agentEnd, outer: nc.c}
	cc := &clientConn{c: sc, bufs: s.cbufs, key: nc.key, icpt: nc.icpt, h2: out}
	cc.attachBufs()

	// A stream reset (or the connection's end) cancels r's context: the
	// request path then reads EOF from its client, as from a closed socket.
	stop := context.AfterFunc(r.Context(), func() { bodyEnd.Close() })
	defer stop()
	defer bodyEnd.Close()

	// The body, framed as head says. The copy may outlive this handler
	// while the client sends: it ends when the stream does (the server
	// closes r.Body once the handler returns) or the pipe closes.
	if r.Body != nil && r.Body != http.NoBody {
		go func() {
			if head.Fields.Has("Transfer-Encoding") {
				cw := httputil.NewChunkedWriter(bodyEnd)
				if _, err := io.Copy(cw, r.Body); err == nil && cw.Close() == nil {
					_, _ = io.WriteString(bodyEnd, "\r\n") // no trailers
				}
				return
			}
			_, _ = io.Copy(bodyEnd, r.Body)
		}()
	}

	s.handleIntercepted(cc, head)
	if cc.bw != nil {
		_ = cc.bw.Flush()
	}
	cc.dropBufs()
	if out.written.Load() || r.Context().Err() != nil {
		return
	}
	// The agent answered itself: its HTTP/1.1 answer, to the stream.
	resp, err := http.ReadResponse(bufio.NewReader(&sc.answer), &http.Request{Method: head.Method})
	if err != nil {
		h2Error(w, http.StatusBadGateway, "no_response", "the request ended without a response")
		return
	}
	defer resp.Body.Close()
	buf := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(buf)
	_, _, _ = out.writeResponse(resp, head.Method, *buf, nil, new(int64))
}

// h2Head is the HTTP/1.1 request head of an HTTP/2 request: its
// pseudo-headers as the request line and Host, its body framed by
// Content-Length when known, else chunked.
func h2Head(r *http.Request, maxBytes int) (*RequestHead, *HeadError) {
	fields := make(Fields, 0, len(r.Header)+2)
	size := 0
	if r.Host != "" {
		fields = append(fields, Field{Name: "Host", Value: r.Host})
	}
	for k, vs := range r.Header {
		if isH2Forbidden(k) || strings.EqualFold(k, "Host") || strings.EqualFold(k, "Content-Length") {
			continue
		}
		for _, v := range vs {
			fields = append(fields, Field{Name: k, Value: v})
			size += len(k) + len(v) + 4
		}
	}
	if len(fields) > maxHeaderFields || size > maxBytes {
		return nil, &HeadError{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "request header fields too large"}
	}
	switch {
	case r.ContentLength > 0:
		fields = append(fields, Field{Name: "Content-Length", Value: strconv.FormatInt(r.ContentLength, 10)})
	case r.ContentLength < 0:
		fields = append(fields, Field{Name: "Transfer-Encoding", Value: "chunked"})
	}
	target := r.URL.RequestURI()
	if r.Method == http.MethodOptions && r.URL.Path == "*" {
		target = "*"
	}
	return &RequestHead{Method: r.Method, Target: target, Proto: "HTTP/1.1", Minor: 1, Fields: fields}, nil
}

// isH2Forbidden names the connection-specific fields HTTP/2 has no place
// for (RFC 9113, 8.2.2).
func isH2Forbidden(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te":
		return true
	}
	return false
}

// h2Error answers a stream with a JSON error, as writeJSON answers
// HTTP/1.1 clients.
func h2Error(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, `{"error":`+strconv.Quote(code)+`,"detail":`+strconv.Quote(detail)+"}\n")
}

// h2Out is an HTTP/2 stream's response writer as the request path sees
// it: the origin's answer goes to the stream as it is (headers, then the
// body), with no HTTP/1.1 framing in between. The agent's own answers
// (JSON errors) take the in-memory connection and are read back instead.
type h2Out struct {
	w       http.ResponseWriter
	written atomic.Bool // the answer went to the stream: nothing comes back through the connection
}

// writeResponse sends resp to the stream. A body of known size goes out
// as the HTTP/2 server batches frames; one of unknown size (a stream,
// SSE) is flushed whenever the upstream has nothing more buffered.
func (o *h2Out) writeResponse(resp *http.Response, method string, buf []byte, more func() bool, sent *int64) (keep bool, upErr, clientErr error) {
	o.written.Store(true)
	h := o.w.Header()
	conn := resp.Header.Values("Connection")
	for k, vs := range resp.Header {
		if responseDrop[k] || isH2Forbidden(k) || (len(conn) > 0 && hasToken(conn, k)) {
			continue
		}
		h[k] = vs
	}
	hasBody := bodyAllowed(method, resp.StatusCode)
	if resp.ContentLength >= 0 && (hasBody || (method == http.MethodHead && resp.Header.Get("Content-Length") != "")) {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	o.w.WriteHeader(resp.StatusCode)
	if !hasBody {
		return false, nil, nil
	}
	stream := resp.ContentLength < 0
	rc := http.NewResponseController(o.w)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			*sent += int64(n)
			if _, werr := o.w.Write(buf[:n]); werr != nil {
				return false, nil, werr
			}
			if stream && (more == nil || !more()) {
				if werr := rc.Flush(); werr != nil {
					return false, nil, werr
				}
			}
		}
		if err == io.EOF {
			return false, nil, nil
		}
		if err != nil {
			return false, err, nil
		}
	}
}
