#!/usr/bin/env bash
# Web chat page and browser tests (issue 4): Debian's chromium (Playwright drives it through
# executable_path; browsers are never downloaded) and the npm packages of web/ (protobufjs,
# esbuild) used by the JS unit tests and by `npm run build`. Idempotent and quick when done.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends chromium fonts-dejavu-core \
    || { apt-get update -q -o DPkg::Lock::Timeout=600 && apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends chromium fonts-dejavu-core; }
fi
command -v npm >/dev/null || { echo "25-web: npm (Node 20) is required for web/" >&2; exit 1; }
lock="$root/web/package-lock.json"
stamp="$root/web/node_modules/.imstack-installed"
if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  (cd "$root/web" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
fi
