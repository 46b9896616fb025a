package metrics

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/proxy-hopper/proxy-hopper/internal/authfail"
)

// NewRegistry returns a fresh registry holding the Go runtime and process
// collectors, for the metrics endpoint of one agent.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg on /metrics. A collector that fails (a pool backend
// that cannot be read) is logged and left out; the rest is still served.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	h := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg,
	}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	return mux
}

// Server serves /metrics on its own listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen opens addr for the metrics endpoint of reg.
func Listen(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return &Server{
		ln: ln,
		srv: &http.Server{
			Handler:           Handler(reg, log),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}, nil
}

// RequireToken makes every request need token, as `Authorization: Bearer
// <token>` or as the password of Basic auth (any user name), which is
// what Prometheus' `authorization` and `basic_auth` send. Wrong tokens
// count against their source in fails (nil: a limiter with authfail's
// defaults logging to log); past the limit a source gets 429. Call it
// before Serve.
func (s *Server) RequireToken(token string, fails *authfail.Limiter, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	if fails == nil {
		fails = authfail.New(authfail.Options{What: "metrics token", Log: log})
	}
	s.srv.Handler = requireToken(s.srv.Handler, token, fails)
}

func requireToken(h http.Handler, token string, fails *authfail.Limiter) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, present := credential(r)
		if !present {
			w.Header().Add("WWW-Authenticate", `Bearer realm="proxy-hopper metrics"`)
			w.Header().Add("WWW-Authenticate", `Basic realm="proxy-hopper metrics"`)
			http.Error(w, "metrics need the token: Authorization: Bearer <server.metricsToken>", http.StatusUnauthorized)
			return
		}
		src := authfail.Source(r.RemoteAddr)
		wait, ok := fails.Take(src)
		if !ok {
			fails.Refused(src)
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			http.Error(w, "too many failed metrics token attempts from this address", http.StatusTooManyRequests)
			return
		}
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			fails.Failed(src, "wrong token")
			w.Header().Add("WWW-Authenticate", `Bearer realm="proxy-hopper metrics", error="invalid_token"`)
			w.Header().Add("WWW-Authenticate", `Basic realm="proxy-hopper metrics"`)
			http.Error(w, "wrong metrics token", http.StatusUnauthorized)
			return
		}
		fails.Succeeded(src)
		h.ServeHTTP(w, r)
	})
}

// credential is the token of an Authorization header: the Bearer token or
// the Basic password (schemes are case-insensitive, RFC 7235).
func credential(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	if v == "" {
		return "", false
	}
	scheme, rest, _ := strings.Cut(v, " ")
	rest = strings.TrimSpace(rest)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return rest, true
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return "", true
		}
		_, pass, _ := strings.Cut(string(raw), ":")
		return pass, true
	}
	return "", true
}

// Addr is where the endpoint listens.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown, then returns nil.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}

// Shutdown stops the endpoint, letting scrapes in progress finish until
// ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}
