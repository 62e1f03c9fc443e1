# The dev-server image: node, python and git for Vite, Next.js and friends,
# non-root (uid 1000, like the file-manager, so both write the volume). It
# also carries the agent, so it can serve as the file-manager image when
# install commands should run beside the files.
# Build from the repository root:
#   docker build -f k8s/images/dev.Dockerfile -t devgate/dev:dev .
# or, for both architectures:
#   docker buildx build --platform linux/amd64,linux/arm64 -f k8s/images/dev.Dockerfile -t devgate/dev:dev .
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
    && cargo build --release --locked --target "$target" -p agent --bin agent \
    && cp "target/$target/release/agent" /agent

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        bash git ca-certificates python3 python3-pip python3-venv procps \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /agent /usr/local/bin/agent
# node:20 already has uid 1000 (`node`); dev servers run as it.
USER 1000:1000
WORKDIR /app
ENV HOME=/tmp NPM_CONFIG_CACHE=/tmp/.npm
