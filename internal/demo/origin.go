package demo

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// origin is the demo's "real" website: a few small JSON endpoints.
type origin struct {
	ln   net.Listener
	srv  *http.Server
	hits atomic.Int64
	done chan struct{}
}

// originMarker is in every origin answer, so clients can tell an origin
// response from an error page of the agent or a proxy.
const originMarker = "demo-origin"

var items = []map[string]any{
	{"id": 1, "name": "widget", "price": 9.5},
	{"id": 2, "name": "gadget", "price": 24},
	{"id": 3, "name": "gizmo", "price": 3.25},
	{"id": 4, "name": "doohickey", "price": 12},
	{"id": 5, "name": "thingamajig", "price": 7.75},
}

func startOrigin() (*origin, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for origin: %w", err)
	}
	o := &origin{ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/items", func(w http.ResponseWriter, r *http.Request) {
		o.reply(w, map[string]any{"items": items})
	})
	mux.HandleFunc("GET /api/items/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil || id < 1 || id > len(items) {
			w.WriteHeader(http.StatusNotFound)
			o.reply(w, map[string]any{"error": "no such item"})
			return
		}
		o.reply(w, map[string]any{"item": items[id-1]})
	})
	mux.HandleFunc("GET /api/time", func(w http.ResponseWriter, r *http.Request) {
		o.reply(w, map[string]any{"now": time.Now().UTC().Format(time.RFC3339Nano)})
	})
	mux.HandleFunc("GET /api/echo", func(w http.ResponseWriter, r *http.Request) {
		o.reply(w, map[string]any{"msg": r.URL.Query().Get("msg"), "ua": r.UserAgent()})
	})
	o.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	go func() {
		defer close(o.done)
		_ = o.srv.Serve(ln) // ErrServerClosed; anything else shows as client errors
	}()
	return o, nil
}

func (o *origin) reply(w http.ResponseWriter, v map[string]any) {
	o.hits.Add(1)
	v["origin"] = originMarker
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// URL is the base URL clients name in X-Proxy-Hopper-Target.
func (o *origin) URL() string { return "http://" + o.ln.Addr().String() }

func (o *origin) Close() {
	_ = o.srv.Close()
	<-o.done
}
