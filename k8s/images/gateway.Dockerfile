# The gateway: a static (musl) binary on Debian slim with git, non-root, with
# the demo page and the bundled templates. Build from the repository root:
#   docker build -f k8s/images/gateway.Dockerfile -t devgate/gateway:dev .
FROM node:20-bookworm-slim AS web
WORKDIR /src/web-demo
COPY web-demo/package.json web-demo/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web-demo/ ./
RUN npm run build

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p gateway --bin gateway \
    && cp target/x86_64-unknown-linux-musl/release/gateway /gateway

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
