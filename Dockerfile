# One image with the broker, the operator and the CLI.
#   docker build -t sluice:dev .
# Build stage: the workspace's release binaries (protoc is vendored; nothing else needed).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice-broker --bin sluice-operator --bin sluice \
 && mkdir -p /out \
 && cp target/release/sluice-broker target/release/sluice-operator target/release/sluice /out/

# Run stage: a small Debian with curl for the health check, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sluice --create-home sluice
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/sluice
# Clients 9092, brokers (Raft) 19092, metrics and probes 9644.
EXPOSE 9092 19092 9644
# The same endpoint as the Kubernetes readiness probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD curl -fsS http://127.0.0.1:9644/readyz || exit 1
ENTRYPOINT ["sluice-broker"]
CMD ["--data-dir", "/var/lib/sluice", "--listen", "0.0.0.0:9092", "--http-listen", "0.0.0.0:9644"]
