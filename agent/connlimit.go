package agent

import (
	"log/slog"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// minAutoConnections is the least maxConnections derived from a small fd
// limit.
const minAutoConnections = 16

// connectionLimit is the proxy's global connection cap: server.maxConnections
// when set, else half of the fds left after server.fdReserve (a proxied
// connection holds two: the client's and the upstream's), so that the admin
// and metrics listeners, the prober, Redis and upstream dials still get
// fds when the client connections are at the cap. nofile 0 (unknown)
// with no setting means no cap.
func connectionLimit(s config.ServerConfig, nofile uint64, log *slog.Logger) int {
	if s.MaxConnections > 0 {
		if nofile > 0 && uint64(2*s.MaxConnections+s.FdReserve) > nofile {
			log.Warn("server.maxConnections leaves too few fds for upstream connections and the agent's own listeners",
				"maxConnections", s.MaxConnections, "fdReserve", s.FdReserve, "fdLimit", nofile)
		}
		return s.MaxConnections
	}
	if nofile == 0 {
		return 0
	}
	if nofile > 1<<30 {
		nofile = 1 << 30
	}
	return max((int(nofile)-s.FdReserve)/2, minAutoConnections)
}
