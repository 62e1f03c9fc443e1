#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: an S3-compatible
# server (moto, from PyPI), Debian's Chromium for the page tests, and the npm
# packages of web-demo/ and the browser tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)
command -v zip >/dev/null || need_apt+=(zip unzip)
# The test control plane (k8s/testenv): certificates, and setpriv for the
# processes its local kubelet runs.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# PostgreSQL for the PostgreSQL state store's tests (they run their own
# throwaway server with initdb; the package's cluster is not used).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
  echo "== pip install moto[server]"
  python3 -m pip install -q 'moto[server]'
  # pyenv makes shims for new scripts only on a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash || true; fi
fi

# Go builds the test control plane from Go modules (k8s/testenv/build.sh);
# GOTOOLCHAIN fetches the pinned toolchain as a module when this go differs,
# which needs go >= 1.21 (Debian's golang-go is older, so it is not used).
if ! command -v go >/dev/null; then
  echo "install-test-deps: go (>= 1.21) is needed to build the test control plane (k8s/testenv)" >&2
  exit 1
fi

# The page (web-demo/) and its browser tests (tests/browser/): exact versions
# from the committed lock files. playwright-core drives Debian's Chromium and
# never downloads a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
for dir in web-demo tests/browser; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "== npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
