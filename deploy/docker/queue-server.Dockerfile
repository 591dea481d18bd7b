# The queue-server image: a static binary on a distroless, non-root base.
# Build from the repository root:
#   docker build -f deploy/docker/queue-server.Dockerfile -t workq/queue-server:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y musl-tools
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p queue-server --target x86_64-unknown-linux-musl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/queue-server /usr/local/bin/queue-server
USER 65532:65532
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/queue-server"]
CMD ["--listen=0.0.0.0:50051", "--http-listen=0.0.0.0:9464", "--data-dir=/data"]
