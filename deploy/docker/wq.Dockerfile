# The wrapper image job-runner injects into work-queue Jobs: a statically
# linked `wq` and a `cp` to copy it into the pod's shared emptyDir, e.g.
#   initContainers: [{name: workq-wrapper, image: workq/wq:0.1.0,
#                     command: [cp, /usr/local/bin/wq, /workq/bin/wq], ...}]
# Build from the repository root:
#   docker build -f deploy/docker/wq.Dockerfile -t workq/wq:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y musl-tools
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p worker-sdk --features cli --bin wq --target x86_64-unknown-linux-musl

FROM busybox:1.37-musl
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/wq /usr/local/bin/wq
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wq"]
