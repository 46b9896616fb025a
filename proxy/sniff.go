package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
)

// maxTLSRecord is the largest TLS plaintext record plus its header.
const maxTLSRecord = 5 + 16384

var errNotClientHello = errors.New("not a TLS ClientHello")

// peekSNI returns the server name of the TLS ClientHello at the head of br
// without consuming anything ("" when the hello carries none). br must be
// able to buffer maxTLSRecord bytes.
func peekSNI(br *bufio.Reader) (string, error) {
	hdr, err := br.Peek(5)
	if err != nil {
		return "", err
	}
	if hdr[0] != 0x16 || hdr[1] != 3 {
		return "", errNotClientHello
	}
	n := int(binary.BigEndian.Uint16(hdr[3:5]))
	if n == 0 || n > 16384 {
		return "", errNotClientHello
	}
	rec, err := br.Peek(5 + n)
	if err != nil {
		return "", err
	}
	return parseClientHelloSNI(rec[5:])
}

// parseClientHelloSNI finds the server_name extension in a handshake
// message that starts with a ClientHello. It never reads past b.
func parseClientHelloSNI(b []byte) (string, error) {
	r := reader(b)
	typ, ok := r.u8()
	if !ok || typ != 1 {
		return "", errNotClientHello
	}
	body, ok := r.vec(3)
	if !ok {
		// A ClientHello larger than one record: parse what arrived.
		body = r
	}
	h := reader(body)
	if !h.skip(2 + 32) { // version, random
		return "", errNotClientHello
	}
	if _, ok := h.vec(1); !ok { // session id
		return "", errNotClientHello
	}
	if _, ok := h.vec(2); !ok { // cipher suites
		return "", errNotClientHello
	}
	if _, ok := h.vec(1); !ok { // compression methods
		return "", errNotClientHello
	}
	exts, ok := h.vec(2)
	if !ok {
		return "", nil // no extensions
	}
	e := reader(exts)
	for len(e) > 0 {
		typ, ok1 := e.u16()
		data, ok2 := e.vec(2)
		if !ok1 || !ok2 {
			return "", errNotClientHello
		}
		if typ != 0 { // server_name
			continue
		}
		d := reader(data)
		list, ok := d.vec(2)
		if !ok {
			return "", errNotClientHello
		}
		l := reader(list)
		for len(l) > 0 {
			nt, ok1 := l.u8()
			name, ok2 := l.vec(2)
			if !ok1 || !ok2 {
				return "", errNotClientHello
			}
			if nt == 0 && validSNI(name) {
				return string(name), nil
			}
		}
		return "", nil
	}
	return "", nil
}

// validSNI accepts a DNS host name: letters, digits, '-', '_' and '.'.
func validSNI(b []byte) bool {
	if len(b) == 0 || len(b) > 253 {
		return false
	}
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// reader is a bounds-checked cursor over a byte slice.
type reader []byte

func (r *reader) u8() (byte, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *reader) u16() (uint16, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*r)
	*r = (*r)[2:]
	return v, true
}

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

// vec reads a vector with a big-endian length prefix of lenBytes bytes.
func (r *reader) vec(lenBytes int) ([]byte, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := 0
	for _, c := range (*r)[:lenBytes] {
		n = n<<8 | int(c)
	}
	rest := (*r)[lenBytes:]
	if len(rest) < n {
		return nil, false
	}
	*r = rest[n:]
	return rest[:n], true
}

// looksLikeHTTP reports whether the peeked bytes start an HTTP/1 request:
// a method token and a space.
func looksLikeHTTP(b []byte) bool {
	for i, c := range b {
		if c == ' ' {
			return i > 0
		}
		if i >= 24 || c >= 0x80 || !tokenTable[c] {
			return false
		}
	}
	return false
}
