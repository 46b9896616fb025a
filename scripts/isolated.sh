#!/usr/bin/env bash
# Runs a command in a private network namespace where only loopback is up,
# so nothing it starts (agents, tinyproxy, Redis, chromium, probes) can send
# a packet off this machine: there is no interface and no route out.
# Namespaces, veth pairs and child cgroups that tests create still work in
# there; cgroup2 and bpffs stay visible (only the network namespace changes).
#
#   scripts/isolated.sh CMD [ARGS...]
#
# Inside, PH_ISOLATED=1 is set; the guard test in internal/testenv checks
# that it holds (TestNetworkIsolated). Calling it again from inside is a
# no-op. As root it needs nothing but unshare(1) and ip(8); as another user
# it uses a user namespace and maps the caller back to its own uid, so tests
# still see a non-root user.
set -euo pipefail

if [ "$#" -eq 0 ]; then
	echo "usage: scripts/isolated.sh CMD [ARGS...]" >&2
	exit 2
fi
if [ "${PH_ISOLATED:-}" = 1 ]; then
	exec "$@"
fi
for bin in unshare ip; do
	if ! command -v "$bin" >/dev/null 2>&1; then
		echo "isolated: $bin is missing (apt-get install util-linux iproute2); refusing to run without network isolation" >&2
		exit 1
	fi
done

echo "isolated: running '$*' in a private network namespace (only lo up, no route off this machine)" >&2
export PH_ISOLATED=1
if [ "$(id -u)" -eq 0 ]; then
	exec unshare --net -- sh -c 'ip link set lo up && exec "$@"' isolated "$@"
fi
# Not root: a user namespace owns the new network namespace. Root inside it
# brings lo up, then a nested user namespace maps back to the caller's uid.
uid=$(id -u) gid=$(id -g)
exec unshare --map-root-user --net -- sh -c \
	'u=$0 g=$1; shift; ip link set lo up && exec unshare --map-user="$u" --map-group="$g" -- "$@"' \
	"$uid" "$gid" "$@"
