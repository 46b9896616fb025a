package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// maxHeaderFields bounds the fields of a request head.
const maxHeaderFields = 1000

// Field is one header line; a head keeps its fields in arrival order.
type Field struct {
	Name  string
	Value string
}

// Fields is an ordered header list. Names compare case-insensitively.
type Fields []Field

// Get returns the first value of name.
func (f Fields) Get(name string) string {
	for _, h := range f {
		if strings.EqualFold(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

// Has reports whether name is present.
func (f Fields) Has(name string) bool {
	for _, h := range f {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

// Values returns every value of name.
func (f Fields) Values(name string) []string {
	var out []string
	for _, h := range f {
		if strings.EqualFold(h.Name, name) {
			out = append(out, h.Value)
		}
	}
	return out
}

// RequestHead is a parsed request line and header block.
type RequestHead struct {
	Method string
	Target string // request-target as sent
	Proto  string // "HTTP/1.1" or "HTTP/1.0"
	Minor  int    // 0 or 1
	Fields Fields
}

// HeadError is a request the agent must refuse with Status.
type HeadError struct {
	Status int
	Reason string
}

func (e *HeadError) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Reason) }

func badRequest(format string, a ...any) error {
	return &HeadError{Status: http.StatusBadRequest, Reason: fmt.Sprintf(format, a...)}
}

// ErrHeadTooLarge is wrapped by the 431 HeadError.
var errHeadTooLarge = &HeadError{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "request header block too large"}

// ReadRequestHead reads one request head of at most max bytes. A connection
// closed before the first byte gives io.EOF; anything malformed gives a
// *HeadError. Bare LF line ends are accepted, a CR elsewhere is not.
func ReadRequestHead(br *bufio.Reader, max int) (*RequestHead, error) {
	budget := max
	line, err := readLine(br, &budget)
	// Tolerate empty lines before the request line (RFC 9112 2.2).
	for err == nil && len(line) == 0 {
		line, err = readLine(br, &budget)
	}
	if err != nil {
		return nil, err
	}
	h, err := parseRequestLine(line)
	if err != nil {
		return nil, err
	}
	for {
		line, err = readLine(br, &budget)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, badRequest("connection closed inside the header block")
			}
			return nil, err
		}
		if len(line) == 0 {
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, badRequest("obsolete header line folding")
		}
		f, err := parseField(line)
		if err != nil {
			return nil, err
		}
		h.Fields = append(h.Fields, f)
		if len(h.Fields) > maxHeaderFields {
			return nil, errHeadTooLarge
		}
	}
}

// readLine returns one line without its line end, charging its length to
// budget. The returned slice is a copy.
func readLine(br *bufio.Reader, budget *int) ([]byte, error) {
	var acc []byte
	for {
		frag, err := br.ReadSlice('\n')
		*budget -= len(frag)
		if *budget < 0 {
			return nil, errHeadTooLarge
		}
		switch {
		case err == nil:
			if acc != nil {
				frag = append(acc, frag...)
			}
			frag = frag[:len(frag)-1]
			if n := len(frag); n > 0 && frag[n-1] == '\r' {
				frag = frag[:n-1]
			}
			if bytes.IndexByte(frag, '\r') >= 0 {
				return nil, badRequest("bare CR in request head")
			}
			return bytes.Clone(frag), nil
		case errors.Is(err, bufio.ErrBufferFull):
			acc = append(acc, frag...)
		case errors.Is(err, io.EOF):
			if len(acc) == 0 && len(frag) == 0 {
				return nil, io.EOF
			}
			return nil, badRequest("connection closed inside the request head")
		default:
			return nil, err
		}
	}
}

func parseRequestLine(line []byte) (*RequestHead, error) {
	s := string(line)
	m, rest, ok1 := strings.Cut(s, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return nil, badRequest("malformed request line")
	}
	if !isToken(m) {
		return nil, badRequest("invalid method")
	}
	if target == "" || strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, badRequest("invalid request target")
	}
	h := &RequestHead{Method: m, Target: target, Proto: proto}
	switch proto {
	case "HTTP/1.1":
		h.Minor = 1
	case "HTTP/1.0":
		h.Minor = 0
	default:
		if strings.HasPrefix(proto, "HTTP/") {
			return nil, &HeadError{Status: http.StatusHTTPVersionNotSupported, Reason: "only HTTP/1.0 and HTTP/1.1 are supported"}
		}
		return nil, badRequest("malformed HTTP version")
	}
	return h, nil
}

func parseField(line []byte) (Field, error) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return Field{}, badRequest("malformed header line")
	}
	name := string(line[:i])
	if !isToken(name) {
		return Field{}, badRequest("invalid header name %q", truncate(name, 64))
	}
	v := bytes.Trim(line[i+1:], " \t")
	for _, c := range v {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return Field{}, badRequest("invalid character in header %s", name)
		}
	}
	return Field{Name: name, Value: string(v)}, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// isToken reports whether s is a non-empty RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || !tokenTable[c] {
			return false
		}
	}
	return true
}

var tokenTable = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// Framing is how a message body is delimited.
type Framing int

const (
	NoBody Framing = iota
	Sized
	Chunked
)

// RequestFraming applies RFC 9112 section 6 to a request, refusing every
// ambiguity that could smuggle a second request past the agent.
func RequestFraming(f Fields) (Framing, int64, error) {
	te := f.Values("Transfer-Encoding")
	cl := f.Values("Content-Length")
	if len(te) > 0 {
		if len(cl) > 0 {
			return 0, 0, badRequest("both Content-Length and Transfer-Encoding")
		}
		if len(te) != 1 || !strings.EqualFold(strings.Trim(te[0], " \t"), "chunked") {
			return 0, 0, &HeadError{Status: http.StatusNotImplemented, Reason: "unsupported Transfer-Encoding"}
		}
		return Chunked, -1, nil
	}
	if len(cl) == 0 {
		return NoBody, 0, nil
	}
	var n int64 = -1
	for _, v := range cl {
		for _, part := range strings.Split(v, ",") {
			part = strings.Trim(part, " \t")
			if part == "" || strings.TrimLeft(part, "0123456789") != "" {
				return 0, 0, badRequest("invalid Content-Length")
			}
			m, err := strconv.ParseInt(part, 10, 64)
			if err != nil {
				return 0, 0, badRequest("invalid Content-Length")
			}
			if n >= 0 && m != n {
				return 0, 0, badRequest("conflicting Content-Length values")
			}
			n = m
		}
	}
	if n == 0 {
		return NoBody, 0, nil
	}
	return Sized, n, nil
}
