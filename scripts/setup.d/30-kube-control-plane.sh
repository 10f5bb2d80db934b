#!/usr/bin/env bash
# Builds the Kubernetes control plane the operator tests run against: kube-apiserver,
# kube-controller-manager (garbage collection of owned children) and etcd, from the Go module
# proxy with scripts/tools/kube/go.mod (k8s.io/kubernetes pinned, staging modules replaced by
# their v0.x.y releases). No kind cluster runs here, so this is the cluster. Cached in
# $IMSTACK_TOOLS/bin with a stamp of the go.mod, so a warm run is a no-op.
set -euo pipefail
here="$(cd "$(dirname "$0")/../tools/kube" && pwd)"
tools="${IMSTACK_TOOLS:-$HOME/.cache/imstack/tools}"
bin="$tools/bin"
mkdir -p "$bin"
stamp="$bin/.kube-control-plane.stamp"
want="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/etcd" ] \
   && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "30-kube-control-plane: Go is required (go 1.25+)" >&2; exit 1; }
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "building kube-apiserver, kube-controller-manager, etcd into $bin (slow the first time)"
go build -trimpath -ldflags '-s -w' -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags '-s -w' -o "$bin/etcd" go.etcd.io/etcd/server/v3
go build -trimpath -ldflags '-s -w' -o "$bin/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
echo "$want" > "$stamp"
