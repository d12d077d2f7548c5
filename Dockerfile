# syntax=docker/dockerfile:1
#
# tokengate's container image.
#   docker build -t tokengate .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/config.yaml:/etc/tokengate/config.yaml:ro" -v tokengate-data:/data \
#     -e TOKENGATE_ADMIN_KEY tokengate
# The config must listen on 0.0.0.0 (listen and admin.listen) and keep its store under /data
# (store.path: /data/tokengate).

# ---- build: the release binary, with the same cargo command as CI (--locked: Cargo.lock
# is used as it is). jemalloc is compiled from source (tikv-jemallocator): this image has
# make and a C compiler. Debian bookworm here and below, so the glibc the binary is linked
# against is the one it runs with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# .cargo/config.toml sets the jemalloc build's environment (JEMALLOC_SYS_WITH_MALLOC_CONF).
COPY .cargo ./.cargo
COPY src ./src
# Cargo.toml declares the benchmark target: its source must exist for cargo to load the
# manifest. docs/admin-openapi.json is compiled into the binary (GET /admin/openapi.json).
COPY benches ./benches
COPY docs ./docs
COPY config.example.yaml ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tokengate /out/bin/tokengate \
    && install -d -m 0750 /out/data

# ---- runtime: Debian slim (glibc, and `sleep` for the Kubernetes preStop pause), a
# numeric non-root user, the binary and an empty /data.
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="tokengate" \
      org.opencontainers.image.description="Reverse-proxy authentication sidecar: Sanctum-style API tokens and browser sessions in front of any web app" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/bin/tokengate /usr/local/bin/tokengate
# The sled store lives here (store.path: /data/tokengate); mount a volume on it.
COPY --from=build --chown=10001:10001 /out/data /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 8080: the proxy (listen); 9090: the admin listener (admin.listen: /healthz, /readyz,
# /metrics, the admin API).
EXPOSE 8080 9090
# `docker run IMAGE` runs `tokengate serve --config /etc/tokengate/config.yaml`;
# `docker run IMAGE check-config --config /etc/tokengate/config.yaml` (or any subcommand)
# runs that instead.
ENTRYPOINT ["tokengate"]
CMD ["serve", "--config", "/etc/tokengate/config.yaml"]
