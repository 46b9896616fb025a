package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
)

// hopHeaders are connection-level headers, never forwarded (RFC 9110 7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// responseDrop are the response headers the agent re-creates or drops.
var responseDrop = func() map[string]bool {
	m := map[string]bool{"Content-Length": true}
	for _, h := range hopHeaders {
		m[h] = true
	}
	return m
}()

// isHop reports whether a request header must not leave the agent: hop-by-hop
// headers, those the Connection header names, framing and Host (rewritten),
// and every X-Proxy-Hopper-* control header.
func isHop(name string, connTokens []string) bool {
	if len(name) >= 15 && strings.EqualFold(name[:15], "X-Proxy-Hopper-") {
		return true
	}
	for _, h := range hopHeaders {
		if strings.EqualFold(name, h) {
			return true
		}
	}
	if strings.EqualFold(name, "Host") || strings.EqualFold(name, "Content-Length") || strings.EqualFold(name, "Expect") {
		return true
	}
	for _, t := range connTokens {
		if strings.EqualFold(name, t) {
			return true
		}
	}
	return false
}

// tokens splits comma-separated header values into trimmed tokens.
func tokens(values []string) []string {
	var out []string
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

func hasToken(values []string, tok string) bool {
	for _, t := range tokens(values) {
		if strings.EqualFold(t, tok) {
			return true
		}
	}
	return false
}

// clientKeepAlive reports whether the client wants the connection kept.
func clientKeepAlive(h *RequestHead) bool {
	conn := h.Fields.Values("Connection")
	if h.Minor == 0 {
		return hasToken(conn, "keep-alive")
	}
	return !hasToken(conn, "close")
}

// bodyAllowed reports whether a response to method with status has a body.
func bodyAllowed(method string, status int) bool {
	return method != http.MethodHead && status != http.StatusNoContent &&
		status != http.StatusNotModified && (status < 100 || status >= 200)
}

// writeResponse writes resp to cc's client: an HTTP/2 stream's answer
// goes to its stream (h2Out), every other one as HTTP/1.x (writeResponse).
func (cc *clientConn) writeResponse(resp *http.Response, method string, clientMinor int, keepAlive bool, buf []byte, more func() bool, sent *int64) (keep bool, upErr, clientErr error) {
	if cc.h2 != nil {
		return cc.h2.writeResponse(resp, method, buf, more, sent)
	}
	return writeResponse(cc.bw, resp, method, clientMinor, keepAlive, buf, more, sent)
}

// writeResponse writes resp to the client, re-framing the body for the
// client's protocol version, and streams the body. It reports whether the
// client connection can carry another request, and the first error reading
// the upstream body (nil when the body ended cleanly). Body bytes written
// are added to *sent.
func writeResponse(cw *bufio.Writer, resp *http.Response, method string, clientMinor int, keepAlive bool, buf []byte, more func() bool, sent *int64) (keep bool, upErr, clientErr error) {
	hasBody := bodyAllowed(method, resp.StatusCode)
	chunked := false
	if hasBody && resp.ContentLength < 0 {
		if clientMinor == 1 {
			chunked = true
		} else {
			keepAlive = false // close-delimited for HTTP/1.0 clients
		}
	}
	cw.WriteString("HTTP/1.")
	cw.WriteString(strconv.Itoa(clientMinor))
	cw.WriteByte(' ')
	cw.WriteString(strconv.Itoa(resp.StatusCode))
	cw.WriteByte(' ')
	text := http.StatusText(resp.StatusCode)
	if _, after, ok := strings.Cut(resp.Status, " "); ok && after != "" {
		text = after
	}
	cw.WriteString(text)
	cw.WriteString("\r\n")
	drop := responseDrop
	if conn := resp.Header.Values("Connection"); len(conn) > 0 {
		drop = maps.Clone(responseDrop)
		for _, t := range tokens(conn) {
			drop[http.CanonicalHeaderKey(t)] = true
		}
	}
	_ = resp.Header.WriteSubset(cw, drop)
	switch {
	case chunked:
		cw.WriteString("Transfer-Encoding: chunked\r\n")
	case resp.ContentLength >= 0 && (hasBody || (method == http.MethodHead && resp.Header.Get("Content-Length") != "")):
		cw.WriteString("Content-Length: " + strconv.FormatInt(resp.ContentLength, 10) + "\r\n")
	}
	switch {
	case !keepAlive:
		cw.WriteString("Connection: close\r\n")
	case clientMinor == 0:
		cw.WriteString("Connection: keep-alive\r\n")
	}
	cw.WriteString("\r\n")
	if !hasBody {
		return keepAlive, nil, cw.Flush()
	}
	upErr, clientErr = copyBody(cw, resp.Body, chunked, buf, more, sent)
	if upErr != nil || clientErr != nil {
		return false, upErr, clientErr
	}
	return keepAlive, nil, nil
}

// copyBody streams body to the client, flushing whenever the upstream has
// nothing more buffered so that streaming responses are not held back.
func copyBody(cw *bufio.Writer, body io.Reader, chunked bool, buf []byte, more func() bool, sent *int64) (upErr, clientErr error) {
	if len(buf) == 0 {
		buf = make([]byte, 32<<10)
	}
	for {
		n, err := body.Read(buf)
		if n > 0 {
			*sent += int64(n)
			if chunked {
				cw.WriteString(strconv.FormatInt(int64(n), 16))
				cw.WriteString("\r\n")
			}
			cw.Write(buf[:n])
			if chunked {
				cw.WriteString("\r\n")
			}
			if more == nil || !more() {
				if werr := cw.Flush(); werr != nil {
					return nil, werr
				}
			}
		}
		if err == io.EOF {
			if chunked {
				cw.WriteString("0\r\n\r\n")
			}
			return nil, cw.Flush()
		}
		if err != nil {
			_ = cw.Flush()
			return err, nil
		}
	}
}

// writeJSON answers with a JSON error body.
func writeJSON(cw *bufio.Writer, status int, minor int, keepAlive bool, v any) error {
	return writeJSONFields(cw, status, minor, keepAlive, nil, v)
}

// writeJSONFields is writeJSON with extra header fields.
func writeJSONFields(cw *bufio.Writer, status int, minor int, keepAlive bool, extra []Field, v any) error {
	body, _ := json.Marshal(v)
	body = append(body, '\n')
	cw.WriteString("HTTP/1." + strconv.Itoa(minor) + " " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n")
	cw.WriteString("Content-Type: application/json\r\n")
	for _, f := range extra {
		writeField(cw, f)
	}
	cw.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	if !keepAlive {
		cw.WriteString("Connection: close\r\n")
	} else if minor == 0 {
		cw.WriteString("Connection: keep-alive\r\n")
	}
	cw.WriteString("\r\n")
	cw.Write(body)
	return cw.Flush()
}

// clientError is the JSON body for a request refused because of the
// client's own bytes.
func clientError(detail string) map[string]any {
	return map[string]any{"error": "bad_request", "detail": detail}
}

// redactURL drops any userinfo before a URL is logged or echoed.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	if u.User == nil {
		return u.String()
	}
	c := *u
	c.User = nil
	return c.String()
}

// readResponse reads the next final response head, skipping 1xx interim
// responses (101 is final, and refused later as an upgrade).
func readResponse(br *bufio.Reader, method string) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err == nil {
			err = checkRespFields(resp.Header)
		}
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != 101 {
			continue
		}
		return resp, nil
	}
}

// writeRequest writes the outgoing request: absolute-form to the proxy for
// http origins, origin-form inside the tunnel for https.
func writeRequest(bw *bufio.Writer, req *request, up Upstream, body *requestBody) error {
	h := req.head
	bw.WriteString(h.Method)
	bw.WriteByte(' ')
	if req.url.Scheme == "http" {
		if req.matchKey != "" {
			bw.WriteString(req.matchKey) // req.url.String(), computed once
		} else {
			bw.WriteString(req.url.String())
		}
	} else {
		bw.WriteString(req.url.RequestURI())
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.url.Host)
	bw.WriteString("\r\n")
	if req.fields != nil {
		for _, f := range req.fields {
			writeField(bw, f)
		}
	} else {
		conn := tokens(h.Fields.Values("Connection"))
		uaSent := req.userAgent == ""
		for _, f := range h.Fields {
			if isHop(f.Name, conn) || (req.overrides != nil && req.overrides.Has(f.Name)) {
				continue
			}
			if req.userAgent != "" && strings.EqualFold(f.Name, "User-Agent") {
				// The spoofed User-Agent takes the place of the client's.
				if !uaSent {
					writeField(bw, Field{Name: "User-Agent", Value: req.userAgent})
					uaSent = true
				}
				continue
			}
			writeField(bw, f)
		}
		if !uaSent {
			writeField(bw, Field{Name: "User-Agent", Value: req.userAgent})
		}
		for _, f := range req.overrides {
			writeField(bw, f)
		}
	}
	if req.url.Scheme == "http" {
		if a := up.authHeader(); a != "" {
			bw.WriteString("Proxy-Authorization: ")
			bw.WriteString(a)
			bw.WriteString("\r\n")
		}
	}
	switch {
	case body.size > 0 || (body.size == 0 && needsLength(h.Method)):
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(body.size, 10))
		bw.WriteString("\r\n\r\n")
		if body.size > 0 {
			if _, err := io.Copy(bw, body.reader()); err != nil {
				return err
			}
		}
	case body.size < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(bw)
		if _, err := io.Copy(cw, body.reader()); err != nil {
			return err
		}
		cw.Close()
		bw.WriteString("\r\n")
	default:
		bw.WriteString("\r\n")
	}
	return bw.Flush()
}

func writeField(bw *bufio.Writer, f Field) {
	bw.WriteString(f.Name)
	bw.WriteString(": ")
	bw.WriteString(f.Value)
	bw.WriteString("\r\n")
}

func needsLength(method string) bool {
	return method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch
}
