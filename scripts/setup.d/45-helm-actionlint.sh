#!/usr/bin/env bash
# helm (chart lint/template tests) and actionlint (users' CI workflow lint), built from the
# Go module proxy into $IMSTACK_TOOLS/bin: no prebuilt binaries can be downloaded here.
# A binary that is already there at the pinned version is kept. actionlint runs shellcheck on
# every `run:` script when it is on PATH: Debian's shellcheck is installed for that.
set -euo pipefail
if ! command -v shellcheck >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends shellcheck \
    || { apt-get -o DPkg::Lock::Timeout=600 update -q;
         DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends shellcheck; }
fi
HELM_VERSION=v3.22.0
ACTIONLINT_VERSION=v1.7.12
bin="${IMSTACK_TOOLS:-$HOME/.cache/imstack/tools}/bin"
mkdir -p "$bin"
export GOFLAGS="${GOFLAGS:-} -trimpath"
export CGO_ENABLED=0

# helm's own Makefile sets the Kubernetes version that `helm template`/`lint` assume (else
# v1.20) from its client-go (v0.37 -> 1.37); the same flags here.
helm_flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  helm_flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=37"
done
helm_stamp="$bin/.helm.stamp"
if ! "$bin/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION" \
   || [ "$(cat "$helm_stamp" 2>/dev/null)" != "$helm_flags" ]; then
  echo "building helm $HELM_VERSION (a few minutes the first time)"
  GOBIN="$bin" go install -ldflags "$helm_flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  printf '%s' "$helm_flags" >"$helm_stamp"
fi

if ! "$bin/actionlint" -version 2>/dev/null | head -1 | grep -qx "$ACTIONLINT_VERSION"; then
  echo "building actionlint $ACTIONLINT_VERSION"
  GOBIN="$bin" go install \
    -ldflags "-X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
"$bin/helm" version --short
"$bin/actionlint" -version | head -1
