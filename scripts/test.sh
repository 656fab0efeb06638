#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, docs, the dependency policy
# (deny.toml), unit and integration tests.
# Installs what the tests need when it is missing (redis-server, openssl,
# dnsmasq, prometheus, nginx, curl and h2load via apt-get, kubernetes-validate, pyjwt,
# cryptography and grpcio via pip, rustfmt/clippy via rustup, cargo-deny via cargo
# install); Rust crates come through cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Real servers and tools the tests run: redis-server and redis-cli (one
# Redis, a cluster and a sentinel), openssl (real keys for
# JWT tests), dnsmasq (from dnsmasq-base, which has no system service) for
# the DNS discovery tests, promtool plus a Prometheus server (the Debian
# `prometheus` package ships both) to check /metrics, and nginx as an app
# that normalises paths (the tests run their own, never the system service),
# and curl as a TLS client from outside the mesh (tests/mesh.rs).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli joins the test clusters; sentinels are `redis-server --sentinel`.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# curl speaks HTTP/2 with prior knowledge; h2load (nghttp2-client) sends
# many HTTP/2 streams over few connections (tests/http2.rs).
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # RUNLEVEL=1 keeps the packages from starting system-wide services.
  $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  log "installing kubernetes-validate"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    'kubernetes-validate==1.37.0'
fi
# PyJWT signs the tokens the inbound tests send (made outside Rust, with
# cryptography for RS256 and ES256).
if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  log "installing pyjwt and cryptography"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    'pyjwt==2.15.1' 'cryptography==48.0.0'
fi
# grpcio is the independent gRPC client and server of the gRPC tests
# (tests/support/grpc_peer.py).
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  log "installing grpcio"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    'grpcio==1.85.4'
fi
if ! command -v cargo-deny >/dev/null 2>&1; then
  log "installing cargo-deny (a few minutes, once)"
  cargo install --locked --quiet cargo-deny
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    log "installing ${component}"
    rustup component add "${component}"
  fi
done

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
log "cargo deny (bans, licenses, sources; advisories need a network CI lacks)"
cargo deny --log-level error check bans licenses sources
log "cargo test"
results=$(mktemp)
set +e
cargo test --all-targets 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, e.g. "282 passed, 0 failed".
grep -E '^test result:' "$results" |
  awk '{passed += $4; failed += $6} END {printf "%d passed, %d failed\n", passed, failed}'
rm -f "$results"
exit "$status"
