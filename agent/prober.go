package agent

import (
	"context"

	"github.com/proxy-hopper/proxy-hopper/metrics"
	"github.com/proxy-hopper/proxy-hopper/pool"
	"github.com/proxy-hopper/proxy-hopper/prober"
)

// newProber builds the prober of a's targets when server.probe is on and
// there is something to probe (nil otherwise).
func (a *Agent) newProber(clock pool.Clock) (*prober.Prober, error) {
	s := a.cfg.Server
	if !s.Probe {
		return nil, nil
	}
	if len(s.ProbeURLs) == 0 {
		a.log.Info("prober not started: no probe URLs")
		return nil, nil
	}
	return prober.New(a.proberTargets(), prober.Options{
		URLs:                    s.ProbeURLs,
		Interval:                s.ProbeInterval.D(),
		Timeout:                 s.ProbeTimeout.D(),
		FailuresUntilQuarantine: s.ProbeFailuresUntilQuarantine,
		ReleasesQuarantine:      s.ProbeReleasesQuarantine,
		MaxPerHour:              s.ProbeMaxPerHour,
		Dialer:                  transparentDialer(a.res),
		Clock:                   clock,
		OnProbe:                 a.mx.probe,
		OnForget:                a.mx.forgetProbe,
		Logger:                  a.log,
		Debug:                   s.DebugProbes,
	})
}

// proberTargets are a's targets as the prober sees them.
func (a *Agent) proberTargets() []prober.Target {
	out := make([]prober.Target, 0, len(a.Targets()))
	for _, t := range a.Targets() {
		out = append(out, prober.Target{Name: t.Name, Pool: t.Pool, Upstreams: t.Upstreams})
	}
	return out
}

// startProber runs the prober in the background until stopProber.
func (a *Agent) startProber(ctx context.Context) {
	if a.prober == nil {
		return
	}
	ctx, a.proberStop = context.WithCancel(ctx)
	a.proberDone = make(chan struct{})
	go func() {
		defer close(a.proberDone)
		_ = a.prober.Run(ctx)
	}()
}

// stopProber stops the prober, cutting the probes in flight, and returns
// once its probes in flight have stopped.
func (a *Agent) stopProber() {
	if a.proberStop != nil {
		a.proberStop()
		<-a.proberDone
	}
}

// Prober is the background prober (nil when server.probe is off): its
// Status and Statuses give each IP's last probe.
func (a *Agent) Prober() *prober.Prober { return a.prober }

// probe records a probe in the metrics, when they are on.
func (x *agentMetrics) probe(s prober.Status) {
	if x == nil {
		return
	}
	x.m.Probe(metrics.ProbeResult{Addr: s.Addr, IPLabels: metrics.IPLabels{Provider: s.Provider, Region: s.Region},
		OK: s.OK, Reason: s.Reason, Duration: s.Latency})
}

// forgetProbe drops the probe gauge of an IP no target uses any more.
func (x *agentMetrics) forgetProbe(addr string) {
	if x == nil {
		return
	}
	x.m.ForgetIP(addr)
}
