#!/usr/bin/env bash
# Docker for the image tests (tests/deploy): Debian's docker.io daemon, started in the
# background when it is not running, and a local base image, because no registry can be
# reached from these machines: a debootstrap of Debian 12 with python3 imported as
# imstack-base:bookworm. Every step is skipped when its result is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
BASE_IMAGE="${IMSTACK_BASE_IMAGE:-imstack-base:bookworm}"
# Bump when the recipe below changes: an image with another recipe label is rebuilt.
BASE_RECIPE=2
state="${IMSTACK_TOOLS:-$HOME/.cache/imstack/tools}/docker"
mkdir -p "$state"

want=(docker.io debootstrap)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" \
    || { apt-get -o DPkg::Lock::Timeout=600 update -q;
         apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"; }
fi

# The Debian client talks to the Debian daemon; another client on PATH may be newer.
DOCKER=/usr/bin/docker

if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "starting dockerd (log: $state/dockerd.log)"
  # A pid file left by a dockerd that died keeps a new one from starting.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  nohup /usr/sbin/dockerd >"$state/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 1
  done
  "$DOCKER" info >/dev/null 2>&1 || { echo "dockerd did not come up; see $state/dockerd.log" >&2; tail -20 "$state/dockerd.log" >&2; exit 1; }
fi

have_recipe="$("$DOCKER" image inspect -f '{{index .Config.Labels "imstack.base.recipe"}}' "$BASE_IMAGE" 2>/dev/null || true)"
if [ "$have_recipe" != "$BASE_RECIPE" ]; then
  root="$state/rootfs-bookworm"
  rm -rf "$root"
  echo "building $BASE_IMAGE with debootstrap (about a minute)"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >"$state/debootstrap.log" 2>&1 \
    || { tail -30 "$state/debootstrap.log" >&2; exit 1; }
  # Like the official slim images: no apt lists or caches, docs, man pages or translations.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/usr/share/locale/* "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
  tar -C "$root" -c . | "$DOCKER" import \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' -c "LABEL imstack.base.recipe=$BASE_RECIPE" \
    - "$BASE_IMAGE"
  rm -rf "$root"
fi
echo "docker ready; base image $BASE_IMAGE"
