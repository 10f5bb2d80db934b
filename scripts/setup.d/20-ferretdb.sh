#!/usr/bin/env bash
# FerretDB v1.24.x (MongoDB wire protocol on SQLite) for the cluster-mode storage tests.
# Built from the Go module proxy: scripts/tools/ferretdb is a small main (pinned go.mod/go.sum)
# around FerretDB's embeddable package
# (no prebuilt binaries can be downloaded here); cached in $IMSTACK_TOOLS/bin/ferretdb.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tools="${IMSTACK_TOOLS:-$HOME/.cache/imstack/tools}"
src="$here/tools/ferretdb"
# Rebuild whenever the pinned sources change (FerretDB v1.24.2 today).
want="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
bin="$tools/bin/ferretdb"
stamp="$tools/bin/.ferretdb-build"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "20-ferretdb: Go toolchain not found (need go >= 1.22 on PATH)" >&2; exit 1; }
mkdir -p "$tools/bin"
echo "20-ferretdb: building FerretDB (scripts/tools/ferretdb, a few minutes on 2 cores)..."
cd "$src"
tmp="$bin.tmp.$$"
GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath -ldflags "-s -w" -o "$tmp" .
mv -f "$tmp" "$bin"
echo "$want" > "$stamp"
"$bin" --version | head -3
