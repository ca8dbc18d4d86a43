# syntax=docker/dockerfile:1
# The sshwarden worker image: `sshwarden run` on ECS Fargate (infra/template.yaml)
# or in the LocalStack dev loop (infra/localstack/docker-compose.yml).
#
#   docker build -t sshwarden .
#   docker build --build-arg FEATURES=direct -t sshwarden .   (the direct sink)
#   docker build --build-arg PGO=0 -t sshwarden .              (no profile-guided build)
#   docker run --rm sshwarden --help
#
# Stage 1 builds the release binary, profile-guided (scripts/build-pgo: an
# instrumented build runs an offline workload, then the release build uses
# its profile; the whole path runs 7-17% faster, BENCHMARKS.md). PGO=0
# builds it plainly, in half the time. Stage 2 is distroless (glibc, CA
# certificates, no shell, no package manager), running as the non-root user
# 65532. The container health check is `sshwarden health` (GET /healthz on
# the metrics port), since the image has no curl.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# Optional cargo features: `direct` (the EC2 + SNS sink, a longer build),
# `kafka` (needs cmake and a C++ compiler in this stage: add them first).
ARG FEATURES=""
ARG PGO=1
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io index and compiled dependencies between
# builds; the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "${PGO}" = 1 ]; then \
      scripts/build-pgo --features "${FEATURES}" \
      && install -D -m 0755 target/pgo/use/release/sshwarden /out/sshwarden; \
    else \
      cargo build --release --locked -p sshwarden-consumers --bin sshwarden --features "${FEATURES}" \
      && install -D -m 0755 target/release/sshwarden /out/sshwarden; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/sshwarden /usr/local/bin/sshwarden
USER 65532:65532
# /metrics, /healthz, /readyz (set SSHWARDEN_METRICS_ADDR=0.0.0.0:9464 to reach them from outside).
EXPOSE 9464
ENV SSHWARDEN_METRICS_ADDR=0.0.0.0:9464 \
    SSHWARDEN_LOG=info
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/sshwarden", "health"]
ENTRYPOINT ["/usr/local/bin/sshwarden"]
CMD ["run"]
