package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

// errBodyTooLarge is returned when a request body passes the size limit.
var errBodyTooLarge = &HeadError{Status: http.StatusRequestEntityTooLarge, Reason: "request body too large"}

// chunkedBody decodes a chunked request body and consumes its trailer
// section, so the connection is positioned at the next request.
type chunkedBody struct {
	br   *bufio.Reader
	cr   io.Reader
	done bool
}

func newChunkedBody(br *bufio.Reader) *chunkedBody {
	return &chunkedBody{br: br, cr: httputil.NewChunkedReader(br)}
}

func (c *chunkedBody) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	n, err := c.cr.Read(p)
	if errors.Is(err, io.EOF) {
		budget := 8 << 10
		for {
			line, lerr := readLine(c.br, &budget)
			if lerr != nil {
				return n, fmt.Errorf("read chunked trailer: %w", lerr)
			}
			if len(line) == 0 {
				break
			}
		}
		c.done = true
		return n, io.EOF
	}
	if err != nil {
		return n, badRequest("malformed chunked body: %v", err)
	}
	return n, nil
}

// limitedBody fails with errBodyTooLarge once more than max bytes are read.
type limitedBody struct {
	r   io.Reader
	max int64
	n   int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.max {
		return n, errBodyTooLarge
	}
	return n, err
}

// requestBody is a request body prepared for forwarding. When the whole body
// fit in the retry buffer it can be sent any number of times; otherwise it
// streams once.
type requestBody struct {
	buf  []byte    // the buffered body, or its first part
	rest io.Reader // nil when buf is the whole body
	size int64     // -1 when unknown (chunked, streaming)
	used bool
	// clientErr is the first error reading the client's side of a
	// streamed body: the attempt failed because of the client.
	clientErr error
}

// clientReader records errors of the client's body stream.
type clientReader struct {
	b *requestBody
	r io.Reader
}

func (c *clientReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF && c.b.clientErr == nil {
		c.b.clientErr = err
	}
	return n, err
}

// prepareBody reads up to bufMax bytes of the body so that it can be
// replayed on retry. Bodies larger than bufMax stream once.
func prepareBody(r io.Reader, size int64, bufMax int64) (*requestBody, error) {
	if r == nil {
		return &requestBody{size: 0}, nil
	}
	if size > bufMax {
		return &requestBody{rest: r, size: size}, nil
	}
	var b bytes.Buffer
	n, err := io.Copy(&b, io.LimitReader(r, bufMax+1))
	if err != nil {
		return nil, err
	}
	if n > bufMax {
		return &requestBody{buf: b.Bytes(), rest: r, size: size}, nil
	}
	return &requestBody{buf: b.Bytes(), size: n}, nil
}

// Replayable reports whether the body can be sent again.
func (b *requestBody) Replayable() bool { return b.rest == nil }

// reader returns the body to send for one attempt.
func (b *requestBody) reader() io.Reader {
	if b.rest == nil {
		return bytes.NewReader(b.buf)
	}
	b.used = true
	return io.MultiReader(bytes.NewReader(b.buf), &clientReader{b: b, r: b.rest})
}

// deadlineReader extends the client connection's read deadline before
// reads of a request body, so a client that stops sending times out.
type deadlineReader struct {
	r     io.Reader
	c     net.Conn
	d     time.Duration
	armed rollingDeadline
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	d.armed.arm(d.c.SetReadDeadline, d.d)
	return d.r.Read(p)
}

// rollingDeadline re-arms a deadline of d from now, but at most every d/8:
// a stall still times out between 7/8·d and d after the last progress, and
// a busy connection skips most timer updates. The deadline it manages must
// not be set elsewhere while it is in use.
type rollingDeadline struct{ at time.Time }

func (r *rollingDeadline) arm(set func(time.Time) error, d time.Duration) {
	if d <= 0 {
		return
	}
	now := time.Now()
	if !r.at.IsZero() && now.Sub(r.at) < d/8 {
		return
	}
	r.at = now
	_ = set(now.Add(d))
}

// reset forgets the last arming, after the deadline was changed elsewhere.
func (r *rollingDeadline) reset() { r.at = time.Time{} }

// sizedBody reads exactly n bytes and fails if the client sends fewer.
type sizedBody struct {
	r io.Reader
	n int64
}

func (s *sizedBody) Read(p []byte) (int, error) {
	if s.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.n {
		p = p[:s.n]
	}
	n, err := s.r.Read(p)
	s.n -= int64(n)
	if errors.Is(err, io.EOF) && s.n > 0 {
		return n, io.ErrUnexpectedEOF
	}
	if s.n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

// eofReader remembers whether its reader reached EOF, and counts bytes.
type eofReader struct {
	r   io.Reader
	eof bool
	n   int64
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += int64(n)
	if errors.Is(err, io.EOF) {
		e.eof = true
	}
	return n, err
}

func bodyErrorStatus(err error) (int, string) {
	var he *HeadError
	switch {
	case errors.As(err, &he):
		return he.Status, he.Reason
	case isTimeout(err):
		return http.StatusRequestTimeout, "timed out reading the request body"
	}
	return http.StatusBadRequest, "incomplete request body"
}
