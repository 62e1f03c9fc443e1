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
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v moto_server >/dev/null; then
  echo "== pip install moto[server]"
  python3 -m pip install -q 'moto[server]'
  hash -r
fi
