#!/usr/bin/env bash
# The pieces of a real Kubernetes node for the node tests (tests/node, `make node-up`):
# - Debian's containerd (container runtime, CRI), runc, containernetworking-plugins (bridge +
#   host-local IPAM), iptables and conntrack (kube-proxy);
# - kubelet, kube-scheduler and kube-proxy from the same k8s.io/kubernetes go.mod as the control
#   plane (scripts/tools/kube);
# - CoreDNS with only the plugins cluster DNS needs (scripts/tools/coredns), run as a pod;
# - FerretDB's own server command (the MongoDB-protocol image: it has --repl-set-name, which the
#   embeddable package of scripts/tools/ferretdb lacks), built from its module source.
# Everything lands in $IMSTACK_TOOLS/bin with a stamp per recipe, so a warm run is a no-op.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${IMSTACK_TOOLS:-$HOME/.cache/imstack/tools}"
bin="$tools/bin"
mkdir -p "$bin"

want=(containerd runc containernetworking-plugins iptables conntrack)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" \
    || { apt-get -o DPkg::Lock::Timeout=600 update -q;
         apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"; }
fi
# The packaged containerd must not run: the node starts its own, with its own socket and root.
service containerd stop >/dev/null 2>&1 || true

command -v go >/dev/null || { echo "35-kube-node: Go is required (go 1.25+)" >&2; exit 1; }
export CGO_ENABLED=0

stamp_ok() { [ "$(cat "$bin/.$1.stamp" 2>/dev/null)" = "$2" ]; }

kube="$root/scripts/tools/kube"
want_kube="$(cat "$kube/go.mod" "$kube/go.sum" | sha256sum | cut -d' ' -f1)"
if ! { [ -x "$bin/kubelet" ] && [ -x "$bin/kube-scheduler" ] && [ -x "$bin/kube-proxy" ] && stamp_ok kube-node "$want_kube"; }; then
  echo "35-kube-node: building kubelet, kube-scheduler, kube-proxy into $bin (several minutes the first time)"
  for cmd in kube-scheduler kubelet kube-proxy; do
    (cd "$kube" && GOFLAGS=-mod=mod go build -trimpath -ldflags '-s -w' -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  echo "$want_kube" >"$bin/.kube-node.stamp"
fi

dns="$root/scripts/tools/coredns"
want_dns="$(cat "$dns/go.mod" "$dns/go.sum" "$dns/main.go" | sha256sum | cut -d' ' -f1)"
if ! { [ -x "$bin/coredns" ] && stamp_ok coredns "$want_dns"; }; then
  echo "35-kube-node: building CoreDNS (a minute or two)"
  (cd "$dns" && GOFLAGS=-mod=mod go build -trimpath -ldflags '-s -w' -o "$bin/coredns" .)
  echo "$want_dns" >"$bin/.coredns.stamp"
fi

# FerretDB's cmd/ferretdb refuses to start without build/version/version.txt, which its release
# tooling generates; the module source from the proxy lacks it, so it is written here.
ferret="$root/scripts/tools/ferretdb"
ferret_version="$(awk '$1 == "github.com/FerretDB/FerretDB" {print $2; exit}' "$ferret/go.mod")"
if [ -z "$ferret_version" ]; then
  ferret_version="$(grep -o 'github.com/FerretDB/FerretDB v[0-9.]*' "$ferret/go.mod" | head -1 | cut -d' ' -f2)"
fi
want_ferret="ferretdb-server $ferret_version"
if ! { [ -x "$bin/ferretdb-server" ] && stamp_ok ferretdb-server "$want_ferret"; }; then
  echo "35-kube-node: building FerretDB $ferret_version's server command"
  moddir="$(cd "$ferret" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$ferret_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  src="$(mktemp -d)"
  trap 'chmod -R u+w "$src" 2>/dev/null; rm -rf "$src"' EXIT
  cp -r "$moddir/." "$src/"
  chmod -R u+w "$src"
  echo "$ferret_version" >"$src/build/version/version.txt"
  (cd "$src" && GOFLAGS=-mod=mod go build -trimpath -ldflags '-s -w' -o "$bin/ferretdb-server" ./cmd/ferretdb)
  "$bin/ferretdb-server" --version | head -2
  echo "$want_ferret" >"$bin/.ferretdb-server.stamp"
fi
echo "35-kube-node: kubelet $("$bin/kubelet" --version | cut -d' ' -f2), containerd $(containerd --version | cut -d' ' -f3)"
