# syntax=docker/dockerfile:1
# The Outrigger image: a release build on Debian, copied into distroless
# (glibc, no shell, non-root 65532). No TLS library is linked, so the
# "cc" variant (libc + libgcc) is all the binary needs.
#   docker build -t outrigger:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, with stub sources, so a source change reuses the layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
# touch: the stubs' build is newer than the real sources' mtimes.
# The release profile keeps line tables for profiling; the image does not.
RUN touch src/main.rs src/lib.rs \
 && CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked \
 && cp target/release/outrigger /outrigger

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /outrigger /usr/local/bin/outrigger
# A default config; in Kubernetes a ConfigMap is mounted over /etc/outrigger.
COPY sidecar-config/sidecar.yaml /etc/outrigger/sidecar.yaml
ENV OUTRIGGER_CONFIG=/etc/outrigger/sidecar.yaml
USER 65532:65532
# outbound, inbound, admin (/live /ready /metrics)
EXPOSE 15001 15006 15090
ENTRYPOINT ["/usr/local/bin/outrigger"]
CMD ["run"]
