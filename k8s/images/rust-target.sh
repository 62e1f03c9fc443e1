#!/bin/sh
# The Rust target of a static (musl) build for a Docker platform's
# architecture: `rust-target.sh "$TARGETARCH"` (BuildKit sets TARGETARCH for
# each platform of `docker buildx build --platform linux/amd64,linux/arm64`).
# Without an argument, the machine's own architecture.
set -eu
arch=${1:-$(uname -m)}
case "$arch" in
  amd64 | x86_64) echo x86_64-unknown-linux-musl ;;
  arm64 | aarch64) echo aarch64-unknown-linux-musl ;;
  *) echo "rust-target.sh: no static build for architecture '$arch' (amd64 and arm64 are built)" >&2; exit 1 ;;
esac
