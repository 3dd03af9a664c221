# outboxd container image.
#   docker build -t outboxd .
#   docker run -v outboxd-data:/var/lib/outboxd -p 127.0.0.1:9811:9811 -p 127.0.0.1:9812:9812 outboxd
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --bin outboxd \
 && strip target/release/outboxd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /var/lib/outboxd --create-home outboxd
COPY --from=build /src/target/release/outboxd /usr/local/bin/outboxd
COPY config/outboxd.toml /etc/outboxd/outboxd.toml
USER outboxd
# In a container the listeners must bind beyond loopback to be reachable;
# publish them only to trusted networks, or set OUTBOXD_INGEST__AUTH_TOKEN_FILE.
ENV OUTBOXD_DATA_DIR=/var/lib/outboxd \
    OUTBOXD_INGEST__HTTP_LISTEN=0.0.0.0:9811 \
    OUTBOXD_METRICS__LISTEN=0.0.0.0:9812 \
    OUTBOXD_LOG__FORMAT=json
VOLUME /var/lib/outboxd
EXPOSE 9811 9812
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run", "--config", "/etc/outboxd/outboxd.toml"]
