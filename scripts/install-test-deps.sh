#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: two independent
# S3-compatible servers (moto from PyPI, s3s-fs from crates.io), Debian's
# Chromium for the page tests, and the npm packages of web-demo/ and the
# browser tests. Safe to run again.
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

# s3s-fs, the second S3 server of the S3 tests (it checks SigV4 signatures,
# presigned URLs included, which moto does not). Pinned: 0.14.1 is the newest
# release whose rust-version (1.92) this toolchain meets (0.15 and later want
# 1.96). Built once into ~/.cargo/bin with its own lock file (a few minutes on
# 2 cores), skipped when that version is installed.
S3S_FS_VERSION=0.14.1
if [ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs $S3S_FS_VERSION" ]; then
  echo "== cargo install s3s-fs $S3S_FS_VERSION"
  cargo install s3s-fs --features binary --version "$S3S_FS_VERSION" --locked --quiet
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
