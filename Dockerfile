# syntax=docker/dockerfile:1.7
#
# swapstream: one image for every role (producer | consumer | api | all).
# The role is the container command: `docker run swapstream:local consumer`.
#
#   docker build -t swapstream:local .
#
# Stages:
#   chef     - Rust toolchain + cargo-chef + what librdkafka's build needs
#   planner  - computes recipe.json (the dependency skeleton) from the manifests
#   builder  - cooks the dependencies (cached layer: only rebuilt when
#              Cargo.toml / Cargo.lock change), then builds the binary
#   runtime  - debian:bookworm-slim, non-root, just the binary

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.77
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# rdkafka-sys (default features) compiles the bundled librdkafka with its own
# mklove ./configure + make (no cmake):
#   - bash, make, gcc *and* g++ (configure probes for a C++ compiler) -> build-essential
#   - zlib1g-dev: the `libz` feature; libz-sys finds the system zlib through
#     pkg-config and links it dynamically (runtime: libz.so.1, part of bookworm-slim)
#   - python3: optional for configure (only the shared-library linker script);
#     installed so the configure output is the same everywhere
# SSL/SASL/zstd/curl are not enabled in Cargo.toml, so no openssl/sasl headers.
# The protobuf schema is compiled by protox (pure Rust): no protoc needed.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential \
        pkg-config \
        python3 \
        zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /app

# ---------------------------------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --bin swapstream --recipe-path recipe.json
# The commit in swapstream_build_info{commit}: .git is not in the build
# context, so build.rs takes it from here (default `unknown`):
#   docker build --build-arg BUILD_COMMIT="$(git rev-parse --short HEAD)" .
ARG BUILD_COMMIT=unknown
COPY . .
RUN cargo build --release --locked --bin swapstream \
 && install -D -m 0755 target/release/swapstream /out/swapstream

# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# ca-certificates: TLS to managed Kafka/Postgres/Redis endpoints.
# zlib (libz.so.1) and glibc are already part of bookworm-slim.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 swapstream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin swapstream
COPY --from=builder /out/swapstream /usr/local/bin/swapstream
# Fail the build if the binary needs a shared library this image lacks.
RUN missing="$(ldd /usr/local/bin/swapstream | grep 'not found' || true)"; \
    if [ -n "$missing" ]; then echo "missing shared libraries: $missing" >&2; exit 1; fi

LABEL org.opencontainers.image.title="swapstream" \
      org.opencontainers.image.description="Token-swap stream analytics: Kafka in, exact aggregates out over REST and WebSocket" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
STOPSIGNAL SIGTERM
# `swapstream healthcheck` is a tiny built-in HTTP GET (the image has no curl);
# it exits 0 on a 2xx answer and 1 otherwise.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/swapstream", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/swapstream"]
CMD ["all"]
