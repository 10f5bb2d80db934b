#!/usr/bin/env bash
# Runs every scripts/setup.d/*.sh in name order. Each one installs or builds one real server
# the tests need and is a no-op when it is already there (tools are cached in $IMSTACK_TOOLS).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export IMSTACK_TOOLS="${IMSTACK_TOOLS:-$HOME/.cache/imstack/tools}"
mkdir -p "$IMSTACK_TOOLS/bin"
for step in "$here"/setup.d/*.sh; do
  [ -e "$step" ] || continue
  echo "==> setup: $(basename "$step")"
  bash "$step"
done
