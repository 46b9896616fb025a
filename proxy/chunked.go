package proxy

import (
	"bytes"
	"io"
	"net/http/httputil"
)

// httputilChunked returns a writer that chunk-encodes into w; Close writes
// the last-chunk line, after which the caller ends the (empty) trailer.
func httputilChunked(w io.Writer) io.WriteCloser { return httputil.NewChunkedWriter(w) }

func bytesReader(b []byte) io.Reader { return bytes.NewReader(append([]byte(nil), b...)) }
