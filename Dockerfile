# syntax=docker/dockerfile:1
# The loglet image: `docker build -t loglet:0.1.0 .` (docs/getting-started.md).
# It runs `loglet run --config /etc/loglet/config.yaml`, the file the DaemonSet mounts from its
# ConfigMap, and serves /metrics, /healthz and /readyz on 9464.

FROM rust:1-bookworm AS build
WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every change to src/. Cargo checks that every declared bench, test and example
# exists, and the image needs none of them, so their tables are left out of the manifest here.
COPY Cargo.toml Cargo.lock ./
# Build settings (jemalloc's defaults): without them the image's binary would differ from ours.
COPY .cargo .cargo
RUN awk '/^\[/ { skip = /^\[\[(bench|test|example)\]\]/ } !skip' Cargo.toml > Cargo.image.toml \
 && mv Cargo.image.toml Cargo.toml \
 && mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src ./src
# Cargo compares modification times: the real sources must look newer than the dummy ones.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/loglet /loglet

# distroless/cc: glibc and libgcc as in the builder, CA certificates, no shell, no package manager.
# Its root variant, not :nonroot: loglet reads the kubelet's root-owned 0640 log files and keeps
# only DAC_READ_SEARCH of root's capabilities (docs/security.md explains why not a non-root user).
FROM gcr.io/distroless/cc-debian12
# The OCI annotations (https://github.com/opencontainers/image-spec/blob/main/annotations.md).
# What only the build knows comes from build args (docs/getting-started.md has the command):
# CREATED (RFC 3339, e.g. `date -u +%Y-%m-%dT%H:%M:%SZ`), REVISION (the commit), SOURCE (the
# repository's URL); URL and DOCUMENTATION default to pages of SOURCE, VENDOR to the project.
# VERSION is the crate's (tests/manifests.rs checks they agree).
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
ARG URL="${SOURCE}"
ARG DOCUMENTATION="${SOURCE:+${SOURCE}/blob/${REVISION:-main}/docs/getting-started.md}"
ARG VENDOR="The loglet authors"
LABEL org.opencontainers.image.title="loglet" \
      org.opencontainers.image.description="Kubernetes node-level log collector: tails container logs, enriches with Pod metadata, ships to Loki, Elasticsearch, OTLP, Splunk HEC and HTTP" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${URL}" \
      org.opencontainers.image.documentation="${DOCUMENTATION}" \
      org.opencontainers.image.vendor="${VENDOR}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /loglet /loglet
USER 0:0
EXPOSE 9464
ENTRYPOINT ["/loglet"]
CMD ["run", "--config", "/etc/loglet/config.yaml"]
