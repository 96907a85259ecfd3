# fupload in a container. Build: `docker build -t fupload .`; run: docs/OPERATIONS.md, "Docker".
# scripts/docker-smoke.sh replays the build command and the runtime stage without Docker (in CI).

# Tools: the Rust toolchain plus cargo-chef, which turns the dependency graph into a recipe.
FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# Plan: the recipe changes only when Cargo.toml or Cargo.lock do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Build: the dependencies from the recipe (a layer cached until the recipe changes), then fupload.
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
# What sqlx's query! macros check the queries against (no database at build time).
COPY .sqlx ./.sqlx
COPY examples ./examples
# A workspace member (the tests' support crate): cargo reads its manifest for any build.
COPY testkit ./testkit
RUN cargo build --release --locked --bin fupload-server

# Run: a slim Debian with the binary, its config and migrations; state in a volume; no root.
FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fupload --shell /usr/sbin/nologin fupload \
 && mkdir -p /var/lib/fupload/data \
 && chown fupload:fupload /var/lib/fupload/data
WORKDIR /var/lib/fupload
COPY --from=build /src/target/release/fupload-server /usr/local/bin/fupload-server
COPY conf ./conf
COPY migrations ./migrations
# Every setting can be overridden the same way: FUPLOAD__<KEY PATH> (README, "Configuration").
ENV FUPLOAD__SERVER__HOST=0.0.0.0 \
    FUPLOAD__LOG__FORMAT=json
USER 10001:10001
VOLUME ["/var/lib/fupload/data"]
EXPOSE 8080
# The binary probes /healthz itself: the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["fupload-server", "-c", "conf/fupload.yml", "healthcheck"]
# SIGTERM (docker stop) shuts down gracefully within shutdownGrace (25 s): give `docker stop` more
# time than that (`--stop-timeout 30`, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["fupload-server", "-c", "conf/fupload.yml"]
