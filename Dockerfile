# Switchboard in one container: the SFU, its web client and its call records.
#
#   docker build -t switchboard .
#   docker run -p 8080:8080 -p 7882:7882/udp -e SWITCHBOARD_PUBLIC_IP=203.0.113.7 \
#     -e SWITCHBOARD_JWT_SECRET=change-me-to-32-random-characters -v switchboard-data:/data switchboard
#
# The UDP port must be published under the same number it has inside (7882): clients are told
# SWITCHBOARD_PUBLIC_IP and that port in the ICE candidates.

# --- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit/buildah cache mounts).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchboard \
    && strip --strip-debug target/release/switchboard \
    && cp target/release/switchboard /usr/local/bin/switchboard

# --- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN groupadd --gid 10001 switchboard \
    && useradd --uid 10001 --gid switchboard --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin switchboard \
    && mkdir /data \
    && chown switchboard:switchboard /data
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/switchboard

ENV SWITCHBOARD_HTTP_ADDR=0.0.0.0:8080 \
    SWITCHBOARD_UDP_PORT=7882 \
    SWITCHBOARD_DATA_DIR=/data \
    SWITCHBOARD_SHUTDOWN_GRACE=10 \
    RUST_LOG=info
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080/tcp 7882/udp
# The binary asks its own GET /readyz (the slim image has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["switchboard", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchboard"]
