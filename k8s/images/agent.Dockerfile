# The file-manager pod's image: the static (musl) `agent` binary, non-root.
# The final stage is a slim Debian rather than distroless because the agent
# runs tools for the project: a shell for terminals beside the files, git for
# clones. Point GATEWAY_K8S_AGENT_IMAGE at the dev-server image instead (it
# contains the agent too) when install commands must run beside the files.
# Build from the repository root:
#   docker build -f k8s/images/agent.Dockerfile -t devgate/agent:dev .
# or, for both architectures:
#   docker buildx build --platform linux/amd64,linux/arm64 -f k8s/images/agent.Dockerfile -t devgate/agent:dev .
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

FROM debian:bookworm-slim AS agent
RUN apt-get update && apt-get install -y --no-install-recommends bash git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 dev && useradd --uid 1000 --gid 1000 --home-dir /app --no-create-home dev
COPY --from=build /agent /usr/local/bin/agent
USER 1000:1000
WORKDIR /app
ENV HOME=/tmp
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/agent"]
