# The gateway: a static (musl) binary on Debian slim with git, non-root, with
# the demo page and the bundled templates. Build from the repository root:
#   docker build -f k8s/images/gateway.Dockerfile -t devgate/gateway:dev .
# or, for both architectures:
#   docker buildx build --platform linux/amd64,linux/arm64 -f k8s/images/gateway.Dockerfile -t devgate/gateway:dev .
# The page is the same for every platform: built once, on the build machine.
FROM --platform=$BUILDPLATFORM node:20-bookworm-slim AS web
WORKDIR /src/web-demo
COPY web-demo/package.json web-demo/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web-demo/ ./
RUN npm run build

# Built for each platform of `docker buildx build --platform linux/amd64,linux/arm64`
# (natively, or under QEMU emulation on a machine of the other architecture).
FROM rust:1.95-bookworm AS build
ARG TARGETARCH
COPY k8s/images/rust-target.sh /usr/local/bin/rust-target
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "$(rust-target "$TARGETARCH")"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(rust-target "$TARGETARCH")" \
    && cargo build --release --locked --target "$target" -p gateway --bin gateway \
    && cp "target/$target/release/gateway" /gateway

# Debian slim rather than distroless: at start the gateway makes each bundled
# template folder into a git repository with the git CLI (templates.rs).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV HOME=/tmp
COPY --from=build /gateway /usr/local/bin/gateway
COPY --from=web /src/web-demo/dist /usr/share/devgate/web-demo
COPY templates /usr/share/devgate/templates
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gateway"]
