# The gateway: a static (musl) binary on distroless, non-root.
# Build from the repository root:
#   docker build -f k8s/images/gateway.Dockerfile -t devgate/gateway:dev .
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

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /gateway /usr/local/bin/gateway
# The demo page, served at / when enabled.
COPY web-demo /usr/share/devgate/web-demo
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gateway"]
