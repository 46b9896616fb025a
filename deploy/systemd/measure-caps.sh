#!/usr/bin/env bash
# Measures which capabilities the eBPF modes need: runs the agent as an
# unprivileged uid with only a given capability set (setpriv: bounding,
# inheritable and ambient sets), in a private network namespace with a veth
# pair (gateway mode intercepts on it) and, for local transparent mode, a
# child cgroup2 directory of its own (never the root cgroup), with the agent
# itself in another child cgroup so the sockmap fast path attaches too.
# For each mode it starts from the full candidate set and drops each
# capability in turn for good when the mode still starts without it (broad
# ones first: CAP_SYS_ADMIN also grants what CAP_BPF and CAP_PERFMON do), so
# what remains is a set none of whose members can go; for each of those it
# prints the error the agent logs without it.
#
#   deploy/systemd/measure-caps.sh BINARY
#
# Root only; leaves nothing behind (namespace, cgroups and pins removed).
set -euo pipefail
bin=$(readlink -f "${1:?usage: measure-caps.sh BINARY}")
cg=${CGROUP2:-$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)}
[ -n "$cg" ] || { echo "no cgroup2 mount" >&2; exit 1; }
ns=phcaps$$ work=$(mktemp -d) pin=/sys/fs/bpf/phcaps$$
chmod 755 "$work"
cleanup() {
	ip netns del "$ns" 2>/dev/null || true
	rmdir "$cg/phcaps-agent" "$cg/phcaps-client" 2>/dev/null || true
	rm -rf "$pin" "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add lan0 type veth peer name lan1
ip -n "$ns" link set lan0 up
ip -n "$ns" link set lan1 up
ip -n "$ns" addr add 192.0.2.1/24 dev lan0
mkdir -p "$cg/phcaps-agent" "$cg/phcaps-client" "$pin"
chown 65534:65534 "$pin"

conf() { # name, transparent block
	cat >"$work/$1.yaml" <<YAML
server: {port: 18089, probe: false, metrics: false, admin: false}
targets:
  - {name: t, regex: '.*', ipList: ["127.0.0.2:3128"]}
transparent:
$2
YAML
}
conf local "  local: {enabled: true, cgroups: [phcaps-client]}"
conf pinned "  local: {enabled: true, cgroups: [phcaps-client], pinned: true, pinDir: $pin/state}"
conf gateway "  gateway: {enabled: true, interfaces: [lan0]}"

# ok MODE CAPS: the agent started the mode with exactly CAPS.
ok() {
	local mode=$1 caps=$2 set="-all" c log=$work/log
	for c in ${caps//,/ }; do set+=",+$c"; done
	# The agent runs in its own child cgroup (so it attaches the sockmap
	# fast path as it would under systemd or in a pod).
	timeout -s TERM 4 sh -c 'echo $$ > "$1/phcaps-agent/cgroup.procs"; shift; exec "$@"' sh "$cg" \
		nsenter --net="/run/netns/$ns" \
		setpriv --reuid 65534 --regid 65534 --clear-groups \
		--inh-caps="$set" --ambient-caps="$set" --bounding-set="$set" \
		"$bin" run --config "$work/$mode.yaml" >"$log" 2>&1 || true
	if [ "$mode" = pinned ]; then rm -rf "${pin:?}"/state; fi
	grep -q "mode on" "$log" && ! grep -q "level=ERROR\|level=WARN" "$log"
}

candidates="sys_admin dac_override ipc_lock net_raw perfmon net_admin bpf"
without() { echo " $1 " | sed "s/ $2 / /; s/^ //; s/ $//"; }
for mode in local pinned gateway; do
	if ! ok "$mode" "${candidates// /,}"; then
		echo "$mode: does not start even with $candidates:"; cat "$work/log"; continue
	fi
	have=$candidates
	for c in $candidates; do
		rest=$(without "$have" "$c")
		if ok "$mode" "${rest// /,}"; then have=$rest; fi
	done
	echo "$mode: needs ${have:-nothing}"
	for c in $have; do
		ok "$mode" "$(without "$have" "$c" | tr ' ' ,)" || true
		echo "  without $c: $(grep -m1 'level=ERROR\|level=WARN' "$work/log" | sed 's/^time=[^ ]* //')"
	done
done
