#!/usr/bin/env bash
# Checks every deployment artefact offline (make deploy-check, part of make
# test): the systemd units (verify, exposure scores), the Helm chart, the
# Compose examples and make dist (deploy/check, a Go module of its own),
# the release binary loading its BPF objects, and the container image.
# Root (netns, cgroup, buildah); needs no network once scripts/deps.sh ran.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}
# Exposure scores (systemd-analyze security --offline, ×10) the units must
# not exceed; docs/deploy.md gives them.
SCORE_PROXY=11 SCORE_EBPF=17
HELM_VERSION=$(awk '$1 == "helm.sh/helm/v3" {print $2}' deploy/check/go.mod)

work=$(mktemp -d) ns=phdeploy$$ cg=""
cleanup() {
	ip netns del "$ns" 2>/dev/null || true
	[ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true
	if [ -n "${ctr:-}" ]; then buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
step() { printf 'deploy-check: %s (%ss)\n' "$1" "$SECONDS"; }

step "agent binary"
CGO_ENABLED=0 $GO build -trimpath -o "$work/proxy-hopper" ./cmd/proxy-hopper

step "systemd units"
mkdir "$work/units"
for u in deploy/systemd/*.service; do
	sed "s|/usr/local/bin/proxy-hopper|$work/proxy-hopper|g" "$u" >"$work/units/${u##*/}"
done
systemd-analyze verify "$work"/units/*.service
for pair in proxy-hopper.service:$SCORE_PROXY proxy-hopper-ebpf.service:$SCORE_EBPF; do
	u=${pair%%:*} max=${pair#*:}
	score=$(systemd-analyze security --offline=yes "deploy/systemd/$u" 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
	echo "  $u: exposure $score (max $((max / 10)).$((max % 10)))"
	systemd-analyze security --offline=yes --threshold="$max" "deploy/systemd/$u" >/dev/null
done

step "helm $HELM_VERSION"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/proxy-hopper
helm="$cache/helm-$HELM_VERSION-$(sha256sum deploy/check/go.sum | cut -c1-12)"
if [ ! -x "$helm" ]; then
	mkdir -p "$cache"
	(cd deploy/check && $GO build -o "$helm.tmp" helm.sh/helm/v3/cmd/helm) && mv "$helm.tmp" "$helm"
fi
"$helm" version --short

step "make dist"
make --no-print-directory dist VERSION=deploy-check >/dev/null

step "deploy/check: helm chart, compose examples, dist"
cmp deploy/grafana/proxy-hopper.json deploy/helm/proxy-hopper/dashboards/proxy-hopper.json ||
	{ echo "the chart's dashboard differs from deploy/grafana/proxy-hopper.json: copy it"; exit 1; }
(
	cd deploy/check
	out=$(gofmt -l .)
	[ -z "$out" ] || { echo "gofmt needed: $out"; exit 1; }
	$GO vet ./...
	PH_BIN="$work/proxy-hopper" HELM="$helm" PH_DIST="$PWD/../../dist" $GO test -count=1 ./...
)

step "dist amd64 binary loads and attaches its BPF objects"
# In a private network namespace with a veth pair, on a child cgroup of
# our own: never the root cgroup or a host interface.
cg2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
cg="$cg2/ph-deploy-check-$$"
mkdir "$cg"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add lan0 type veth peer name lan1
ip -n "$ns" link set lan0 up
ip -n "$ns" link set lan1 up
cat >"$work/ebpf.yaml" <<YAML
server: {port: 18080, probe: false, metrics: false, admin: false}
targets:
  - {name: t, regex: '.*', ipList: ["127.0.0.2:3128"]}
transparent:
  local: {enabled: true, cgroups: ["${cg#"$cg2"/}"]}
  gateway: {enabled: true, interfaces: [lan0]}
YAML
timeout -s TERM 5 nsenter --net="/run/netns/$ns" dist/proxy-hopper-deploy-check-linux-amd64 run --config "$work/ebpf.yaml" >"$work/ebpf.log" 2>&1 || true
if ! grep -q 'msg="transparent mode on"' "$work/ebpf.log" || ! grep -q 'msg="gateway mode on"' "$work/ebpf.log" || grep -q level=ERROR "$work/ebpf.log"; then
	cat "$work/ebpf.log"; echo "the dist binary did not start both eBPF modes"; exit 1
fi

step "container image"
make --no-print-directory image IMAGE=localhost/proxy-hopper:deploy-check IMAGE_LATEST= VERSION=deploy-check >/dev/null
img=localhost/proxy-hopper:deploy-check
fmt='{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Cmd}}|{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}|{{index .OCIv1.Config.Labels "org.opencontainers.image.source"}}'
got=$(buildah inspect --type image --format "$fmt" "$img")
want='65532:65532|[/usr/local/bin/proxy-hopper]|[run --config /etc/proxy-hopper/config.yaml]|deploy-check|https://github.com/proxy-hopper/proxy-hopper'
[ "$got" = "$want" ] || { echo "image config: got $got, want $want"; exit 1; }
ctr=$(buildah from "$img")
mnt=$(buildah mount "$ctr")
size=$(du -sb "$mnt" | cut -f1)
echo "  root filesystem: $size bytes"
[ "$size" -lt 40000000 ] || { echo "image root filesystem over 40 MB"; exit 1; }
[ -s "$mnt/etc/ssl/certs/ca-certificates.crt" ] || { echo "no CA certificates in the image"; exit 1; }
# Run the image's own binary from its root filesystem as its user, with a
# config bind-mounted where the image expects it (podman run is not
# available on every machine this runs on).
mkdir -p "$mnt/etc/proxy-hopper"
: >"$mnt/etc/proxy-hopper/config.yaml"
# Then `run` with the image's default command, on a read-only root, in
# the private network namespace of the eBPF check: it must listen.
nsenter --net="/run/netns/$ns" unshare -m sh -ec '
	mount --bind "$1" "$1"
	mount -o remount,bind,ro "$1"
	# After the read-only self-bind: a bind made before it would not be in it.
	mount --bind deploy/compose/memory/config.yaml "$1/etc/proxy-hopper/config.yaml"
	chroot --userspec=65532:65532 "$1" /usr/local/bin/proxy-hopper version
	chroot --userspec=65532:65532 "$1" /usr/local/bin/proxy-hopper validate --config /etc/proxy-hopper/config.yaml
	timeout -s TERM 3 chroot --userspec=65532:65532 "$1" /usr/local/bin/proxy-hopper run --config /etc/proxy-hopper/config.yaml --no-probe || [ $? = 124 ]
' sh "$mnt" >"$work/image.log" 2>&1 || { cat "$work/image.log"; exit 1; }
grep -q '^proxy-hopper deploy-check$' "$work/image.log" && grep -q 'Config OK — [1-9][0-9]* target' "$work/image.log" &&
	grep -q 'msg="Proxy Hopper running on ' "$work/image.log" && grep -q 'msg=stopped' "$work/image.log" ||
	{ cat "$work/image.log"; echo "image binary: unexpected output"; exit 1; }
buildah rmi "$img" >/dev/null 2>&1 || true
step "ok"
