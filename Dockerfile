# outboxd container image.
#   docker build -t outboxd .
#   docker run -v outboxd-data:/var/lib/outboxd -v outboxd-socket:/run/outboxd -p 127.0.0.1:9812:9812 outboxd
# deploy/compose/ runs it with MinIO and Prometheus; deploy/kubernetes/ as a sidecar.
# Agents reach ingest through the Unix socket (share /run/outboxd as a volume)
# or, in a Kubernetes pod, on the pod's loopback (127.0.0.1:9811). The ingest
# listener stays on loopback: binding it beyond needs ingest.auth_token (or
# the explicit ingest.allow_unauthenticated_remote = true). Only the
# read-only metrics listener is published.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --bin outboxd \
 && strip target/release/outboxd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /var/lib/outboxd --create-home outboxd \
 && install -d -o outboxd -g outboxd -m 0755 /run/outboxd
COPY --from=build /src/target/release/outboxd /usr/local/bin/outboxd
COPY config/outboxd.toml /etc/outboxd/outboxd.toml
USER outboxd
ENV OUTBOXD_DATA_DIR=/var/lib/outboxd \
    OUTBOXD_INGEST__HTTP_LISTEN=127.0.0.1:9811 \
    OUTBOXD_INGEST__UNIX_SOCKET=/run/outboxd/outboxd.sock \
    OUTBOXD_METRICS__LISTEN=0.0.0.0:9812 \
    OUTBOXD_LOG__FORMAT=json
VOLUME ["/var/lib/outboxd", "/run/outboxd"]
EXPOSE 9812
# Through the binary itself: slim images have no curl. Ready = the outbox is
# open and every listener is bound (GET /readyz on the metrics listener).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/outboxd", "health", "--url", "http://127.0.0.1:9812"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run", "--config", "/etc/outboxd/outboxd.toml"]
