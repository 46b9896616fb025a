#!/usr/bin/env bash
# make bench: builds the agent, installs wrk if missing (root), and runs the
# benchmark harness; the Markdown report goes to stdout and bench-report.md.
# As root it also runs scripts/benchtransparent (transparent mode, issue #3:
# eBPF, a network namespace of its own, redsocks + iptables inside it) and
# installs redsocks and iptables for it when missing, then
# scripts/benchgateway (gateway mode, issue #4: four network namespaces of
# its own, ~90 s).
# Then, as root or not, scripts/benchintercept (TLS interception, issue #18:
# keep-alive HTTPS intercepted vs tunnelled vs mitmproxy, handshakes with a
# warm and a cold certificate cache; ~3 min); as root it installs Debian's
# mitmproxy for it when missing, otherwise the mitmproxy rows are left out
# when mitmdump is missing.
# Each harness re-executes itself in a private network namespace with only
# loopback up (scripts/isolated.sh), so no benchmark packet leaves the
# machine; the installs above and below happen before, outside it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
if ! command -v wrk >/dev/null 2>&1; then
	if [ "$(id -u)" -ne 0 ]; then echo "bench: wrk is missing; apt-get install wrk" >&2; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
make build
# PH_BENCH_TRANSPARENT_ONLY=1: only the transparent-mode rows, reported in
# bench-report-transparent.md (bench-report.md is left as it is).
# PH_BENCH_GATEWAY_ONLY=1: only the gateway-mode rows (issue #4), reported in
# bench-report-gateway.md.
# PH_BENCH_INTERCEPT_ONLY=1: only the TLS interception rows (issue #18),
# reported in bench-report-intercept.md.
report=bench-report.md
# intercept runs scripts/benchintercept, installing mitmproxy first when
# root and missing; without mitmdump (not root) its rows are left out.
intercept() {
	local mitm=(-mitmdump mitmdump)
	if ! command -v mitmdump >/dev/null 2>&1; then
		if [ "$(id -u)" -eq 0 ]; then
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mitmproxy >/dev/null ||
				{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mitmproxy >/dev/null; }
		else
			echo "bench: mitmdump is missing (apt-get install mitmproxy as root); the mitmproxy rows are left out" >&2
			mitm=(-mitmdump '')
		fi
	fi
	echo "TLS interception (issue #18):" | tee -a "$1"
	echo | tee -a "$1"
	go run ./scripts/benchintercept -bin bin/proxy-hopper "${mitm[@]}" | tee -a "$1"
}
if [ "${PH_BENCH_INTERCEPT_ONLY:-0}" = 1 ]; then
	report=bench-report-intercept.md
	: >"$report"
	intercept "$report"
	exit 0
fi
if [ "${PH_BENCH_GATEWAY_ONLY:-0}" = 1 ]; then
	if [ "$(id -u)" -ne 0 ]; then echo "bench: gateway-mode rows need root" >&2; exit 1; fi
	report=bench-report-gateway.md
	echo "Gateway mode (issue #4):" | tee "$report"
	echo | tee -a "$report"
	go run ./scripts/benchgateway -bin bin/proxy-hopper | tee -a "$report"
	exit 0
fi
if [ "${PH_BENCH_TRANSPARENT_ONLY:-0}" != 1 ]; then
	go run ./scripts/bench -bin bin/proxy-hopper "$@" | tee "$report"
else
	report=bench-report-transparent.md
	: >"$report"
fi
if [ "$(id -u)" -eq 0 ]; then
	need=()
	command -v redsocks >/dev/null 2>&1 || need+=(redsocks)
	command -v iptables >/dev/null 2>&1 || need+=(iptables)
	if ((${#need[@]})); then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
	fi
	# Debian may start redsocks as a service; the bench runs its own.
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redsocks 2>/dev/null; then
		systemctl stop redsocks || true
	fi
	echo | tee -a "$report"
	echo "Transparent mode (issue #3):" | tee -a "$report"
	echo | tee -a "$report"
	go run ./scripts/benchtransparent -bin bin/proxy-hopper | tee -a "$report"
	echo | tee -a "$report"
	echo "Gateway mode (issue #4):" | tee -a "$report"
	echo | tee -a "$report"
	go run ./scripts/benchgateway -bin bin/proxy-hopper | tee -a "$report"
else
	echo "bench: transparent-mode rows need root (eBPF, network namespace); skipped" >&2
fi
echo | tee -a "$report"
intercept "$report"
