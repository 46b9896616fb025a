#!/usr/bin/env bash
# Installs what the tests need and is missing: Debian packages (as root)
# and Go modules. Safe to run again; does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

need=()
# clang-19/llvm-19 (make generate), libbpf headers, bpftool, iproute2 and
# util-linux (nsenter, unshare) for the transparent-mode eBPF tests;
# chromium (headless) for the admin status page test; buildah (make image)
# and systemd-analyze for scripts/deploy-check.sh.
for pair in tinyproxy:tinyproxy curl:curl redis-server:redis-server \
	clang-19:clang-19 llvm-strip-19:llvm-19 bpftool:bpftool ip:iproute2 nsenter:util-linux \
	chromium:chromium buildah:buildah systemd-analyze:systemd; do
	bin=${pair%%:*} pkg=${pair#*:}
	command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; run as root or install them" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -e /usr/include/bpf/bpf_helpers.h ] && [ "$(id -u)" -eq 0 ]; then
	echo "deps: installing libbpf-dev"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends libbpf-dev >/dev/null ||
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends libbpf-dev >/dev/null; }
fi
# bpffs, for `proxy-hopper bpf status` and pinned mode.
if [ "$(id -u)" -eq 0 ] && [ -d /sys/fs/bpf ] && ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf || echo "deps: could not mount bpffs at /sys/fs/bpf" >&2
fi
# Debian starts these as services on install; the tests run their own.
for svc in tinyproxy redis-server; do
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
		systemctl stop "$svc" || true
	fi
done
go mod download
# The deployment checks' own module (Helm, Kubernetes API types).
(cd deploy/check && go mod download)
