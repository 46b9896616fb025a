package agent

import (
	"context"
	"io"
	"net"

	"github.com/proxy-hopper/proxy-hopper/config"
)

// startLocalTransparent starts local transparent mode when configured. A
// kernel without a needed feature (or any other setup failure) disables
// transparent mode with one error log; the rest of the agent runs on.
func (a *Agent) startLocalTransparent(ctx context.Context) io.Closer {
	if !a.cfg.Transparent.Local.Enabled {
		return nil
	}
	tp, err := a.startTransparent(ctx)
	if err != nil {
		a.log.Error("transparent mode disabled", "err", err)
		return nil
	}
	return tp
}

// stopLocalTransparent detaches the data plane first, so that new connects
// go to their destinations again while connections in flight drain.
func (a *Agent) stopLocalTransparent() {
	a.reload.mu.Lock() // a reload may update the data plane meanwhile
	tp := a.tp
	a.tp = nil
	a.reload.mu.Unlock()
	if tp == nil {
		return
	}
	s, ok := tp.(interface{ Stop() error })
	if !ok {
		if err := tp.Close(); err != nil {
			a.log.Warn("detach transparent mode", "err", err)
		}
		return
	}
	if err := s.Stop(); err != nil {
		a.log.Warn("detach transparent mode", "err", err)
	}
	a.tpDrain = tp
}

// releaseLocalTransparent releases what stopLocalTransparent left for the
// connections being drained (the fast path's maps: freeing them would drop
// the bytes still queued at the agent's sockets).
func (a *Agent) releaseLocalTransparent() {
	tp := a.tpDrain
	a.tpDrain = nil
	if tp == nil {
		return
	}
	if err := tp.Close(); err != nil {
		a.log.Warn("release transparent mode", "err", err)
	}
}

// transparentDialer marks the agent's own sockets when local transparent
// mode is on (nil: the proxy's default dialer).
func transparentDialer(res *config.Resolved) *net.Dialer {
	if !res.Transparent.Local.Enabled {
		return nil
	}
	return markingDialer(res.Transparent.Local.Mark)
}
