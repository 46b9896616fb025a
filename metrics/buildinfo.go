package metrics

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// newBuildInfo is proxy_hopper_build_info: always 1, labelled with the
// agent's version, the VCS revision the Go toolchain stamped (empty when
// it did not), and the Go version, as Prometheus exporters do.
func newBuildInfo(version string) prometheus.Collector {
	if version == "" {
		version = "unknown"
	}
	revision := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "build_info",
		Help:      "Always 1; labels name the version, VCS revision and Go version of the running agent.",
		ConstLabels: prometheus.Labels{
			"version": version, "revision": revision, "goversion": runtime.Version(),
		},
	})
	g.Set(1)
	return g
}
