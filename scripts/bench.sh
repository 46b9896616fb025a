#!/usr/bin/env bash
# make bench: builds the agent, installs wrk if missing (root), and runs the
# benchmark harness; the Markdown report goes to stdout and bench-report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
if ! command -v wrk >/dev/null 2>&1; then
	if [ "$(id -u)" -ne 0 ]; then echo "bench: wrk is missing; apt-get install wrk" >&2; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
make build
go run ./scripts/bench -bin bin/proxy-hopper "$@" | tee bench-report.md
