#!/usr/bin/env bash
# Builds the four imstack images (access, dispatch, route, operator): `make images`.
#
# The images install nothing from the network: this script downloads the dependency wheels on
# the host (for the image's Python, IMAGE_PYTHON_VERSION, and CPU) into a wheelhouse, stages a
# build context with the project sources, and each Dockerfile installs with --no-index. So an
# image builds the same on a laptop, in CI, and on machines whose containers cannot reach PyPI
# (no CA bundle is ever copied into an image).
#
# Settings (environment or make variables):
#   BASE_IMAGE            base of every stage (default python:3.11-slim). When it is not set and
#                         python:3.11-slim can be neither found nor pulled (machines without a
#                         registry), the local imstack-base:bookworm of scripts/setup.d/50-docker.sh
#                         is used, and the script says so.
#   IMAGE_REPO            name prefix (default imstack -> imstack/access:TAG ...)
#   IMAGE_TAG             tag (default: the project version from pyproject.toml)
#   IMAGE_PYTHON_VERSION  Python of the base image (default 3.11.0: the oldest 3.11, so that
#                         markers such as python_full_version < "3.11.3" are covered too)
#   IMAGES                which images (default "access dispatch route operator")
#   DOCKER                docker client (default docker)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
DOCKER="${DOCKER:-docker}"
PYTHON="${PYTHON:-python3}"
DEFAULT_BASE=python:3.11-slim
LOCAL_BASE=imstack-base:bookworm
base_given="${BASE_IMAGE:+yes}"
BASE_IMAGE="${BASE_IMAGE:-$DEFAULT_BASE}"
IMAGE_REPO="${IMAGE_REPO:-imstack}"
IMAGE_PYTHON_VERSION="${IMAGE_PYTHON_VERSION:-3.11.0}"
IMAGES="${IMAGES:-access dispatch route operator}"
if [ -z "${IMAGE_TAG:-}" ]; then
  IMAGE_TAG="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
fi
case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "unsupported CPU $(uname -m)" >&2; exit 1 ;;
esac

"$DOCKER" info >/dev/null 2>&1 || {
  echo "build-images: docker cannot reach a daemon (run scripts/setup.d/50-docker.sh)" >&2; exit 1; }

if [ -z "$base_given" ] && ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
   && ! timeout 300 "$DOCKER" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
  if "$DOCKER" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    echo "build-images: $BASE_IMAGE cannot be pulled here; using the local $LOCAL_BASE (Debian 12, Python 3.11)"
    BASE_IMAGE="$LOCAL_BASE"
  else
    echo "build-images: $BASE_IMAGE cannot be pulled and $LOCAL_BASE does not exist:" \
         "set BASE_IMAGE or run scripts/setup.d/50-docker.sh" >&2
    exit 1
  fi
fi

out="$root/build/images"
wheelhouse="$out/wheelhouse"
context="$out/context"
mkdir -p "$wheelhouse"

# 1. Requirements of the runtime images (pyproject.toml) and of the operator image (the
#    operator's own distribution, operator/pyproject.toml: it does not need the runtime's).
"$PYTHON" - "$wheelhouse" <<'PY'
import pathlib, sys, tomllib
out = pathlib.Path(sys.argv[1])
runtime = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
operator = tomllib.load(open("operator/pyproject.toml", "rb"))["project"]["dependencies"]
for name, reqs in (("runtime", runtime), ("operator", operator)):
    text = "".join(r + "\n" for r in reqs)
    path = out / f"requirements-{name}.txt"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
PY

# 2. Dependency wheels (binary only, for the image's Python and glibc), refreshed only when the
#    requirements change. setuptools and wheel let stage 1 build the project wheel offline.
#    pip evaluates environment markers with the host's Python, not --python-version: redis
#    needs async-timeout on Python < 3.11.3 (Debian 12 has 3.11.2), so it is named here.
stamp="$wheelhouse/.stamp"
want="$(cat "$wheelhouse"/requirements-*.txt; echo "$IMAGE_PYTHON_VERSION $arch async-timeout")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "build-images: downloading dependency wheels into $wheelhouse"
  platforms=(--platform "manylinux2014_$arch")
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  pyver="$(echo "$IMAGE_PYTHON_VERSION" | cut -d. -f1,2 | tr -d .)"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: "${platforms[@]}" \
    --python-version "$IMAGE_PYTHON_VERSION" --implementation cp --abi "cp$pyver" \
    --dest "$wheelhouse" \
    -r "$wheelhouse/requirements-runtime.txt" -r "$wheelhouse/requirements-operator.txt" \
    "setuptools>=68" wheel \
    "async-timeout>=4.0.3"
  printf '%s' "$want" >"$stamp"
fi

# 3. The build context: only what the images need, so nothing else (venv, .git) is sent.
rm -rf "$context"
mkdir -p "$context"
sources=(pyproject.toml im_runtime)
for extra in README.md operator; do [ -e "$extra" ] && sources+=("$extra"); done
tar -C "$root" -c --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' "${sources[@]}" \
  | tar -C "$context" -x
mkdir -p "$context/operator"
cp -r "$wheelhouse" "$context/wheelhouse"

# 4. The images. Layers are cached: a code change rebuilds only the project wheel layers.
for name in $IMAGES; do
  tag="$IMAGE_REPO/$name:$IMAGE_TAG"
  echo "build-images: $tag (base $BASE_IMAGE)"
  start=$(date +%s)
  log="$out/build-$name.log"
  "$DOCKER" build -f "images/$name/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "org.opencontainers.image.title=imstack-$name" \
    --label "org.opencontainers.image.version=$IMAGE_TAG" \
    --label "io.imstack.image=$name" \
    -t "$tag" "$context" >"$log" 2>&1 \
    || { tail -n 40 "$log" >&2; echo "build-images: $tag failed; full log in $log" >&2; exit 1; }
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag")
  echo "build-images: $tag built in $(( $(date +%s) - start ))s, $(( size / 1000000 )) MB"
done
# Earlier builds of these images, now untagged, would pile up on a machine that rebuilds often.
"$DOCKER" image prune -f --filter "label=io.imstack.image" >/dev/null
