# Build: the release binary, with its migrations embedded.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin fupload-server

# Run: a small Debian with the binary, its config and a data volume, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/fupload fupload \
 && mkdir -p /var/lib/fupload/data && chown -R fupload /var/lib/fupload
WORKDIR /var/lib/fupload
COPY --from=build /src/target/release/fupload-server /usr/local/bin/fupload-server
COPY conf ./conf
COPY migrations ./migrations
USER fupload
VOLUME ["/var/lib/fupload/data"]
ENV FUPLOAD__SERVER__HOST=0.0.0.0
EXPOSE 8080
ENTRYPOINT ["fupload-server", "-c", "conf/fupload.yml"]
