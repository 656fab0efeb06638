#!/usr/bin/env python3
"""Measures what a sidecar proxy costs (entry point: bench/run.sh).

Three one-thread replicas serve "ok\\n". In each round every proxy is started
in turn (the same order every round, so rounds interleave: A B C A B C),
timed from process start to its first ready answer, left idle for its
resting memory, then driven closed-loop by wrk at each connection count and
at a fixed rate by oha, with its CPU time read from /proc around each run.
Every figure is also divided by the same figure of Envoy --concurrency 1
and of the direct path measured in the same round: on a shared machine the
absolute numbers drift between rounds, those ratios much less. Medians
over rounds go to a markdown table (stdout and summary.md) and CSV.

With --inbound it measures the inbound listener instead, in front of one
replica as the pod's app, with what a service turns on there: RS256 JWTs
(a key made with openssl), a per-user rate limit too high to refuse and
the GET cache. It runs with no Redis (the in-process store), a standalone
Redis and a 3-master Redis cluster, all three started here; the ratios are
to the run without Redis, and the Redis servers' CPU per request is shown
beside the sidecar's.

With --mesh it measures the app's call crossing two sidecars, A's outbound
listener to B's inbound listener in front of one replica: Outrigger with
mutual TLS between them (identities made with openssl), two Envoys with
the same static mutual TLS and the same certificates, and the Outrigger
pair in plain text. Each pair's two processes are counted together (CPU
and memory), and the ratios are to the Envoy pair.

With --http2 the callers speak HTTP/2 with prior knowledge (h2c) and every
proxy calls the replicas over HTTP/2: h2load drives the closed-loop runs
with --streams concurrent streams on each connection, oha --http2 the
fixed-rate ones. With --grpc the call is a unary gRPC call (a POST of one
gRPC message, answered with one message and `grpc-status` in trailers),
over HTTP/2 the same way. nginx, which proxies HTTP/2 to replicas only as
gRPC, is left out of both.

Python 3 standard library only (and openssl, redis-server, redis-cli for
--inbound, openssl for --mesh, h2load for --http2 and --grpc).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

BENCH = Path(__file__).resolve().parent.parent
TOP = BENCH.parent
TICKS = os.sysconf("SC_CLK_TCK")
UPSTREAM_PORTS = [19081, 19082, 19083]
LISTEN = 19090
ADMIN = 19091
PREFIX = "/echo/"
REFERENCE = "envoy-c1"
# --inbound: the Redis servers, and what the figures are divided by.
REDIS_PORT = 19379
CLUSTER_PORTS = [19380, 19381, 19382]
INBOUND_REFERENCE = "inbound-local"
# --mesh: sidecar B's ports (A takes LISTEN and ADMIN), the identities, and
# what the figures are divided by.
MESH_INBOUND = 19095
MESH_B_OUTBOUND = 19096
MESH_B_ADMIN = 19097
MESH_A_ID = "spiffe://cluster.local/ns/bench/sa/frontend"
MESH_B_ID = "spiffe://cluster.local/ns/bench/sa/catalog"
MESH_REFERENCE = "envoy-mtls"
# --grpc: the method called (after the routing prefix), and one gRPC
# message (uncompressed, 5 bytes) as the request body.
GRPC_METHOD = "bench.Echo/Unary"
GRPC_REQUEST = b"\x00\x00\x00\x00\x05hello"


def note(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Process:
    """A process started in a session of its own, stopped by its group id."""

    running: list["Process"] = []

    def __init__(self, argv: list[str], log: Path, cwd: Optional[Path] = None):
        self.log = log
        self.started = time.monotonic()
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          cwd=cwd)
        Process.running.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """Every live process of the session (nginx's workers included)."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = stat_fields(int(entry))
                if fields and fields[0] != "Z" and int(fields[3]) == self.popen.pid:
                    out.append(int(entry))
        return out

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds summed over the session."""
        user = system = 0
        for pid in self.pids():
            fields = stat_fields(pid)
            if fields:
                user += int(fields[11])  # utime
                system += int(fields[12])  # stime
        return user / TICKS, system / TICKS

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) summed over the session, in KiB."""
        rss = peak = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss += field_kib(status, "VmRSS")
            peak += field_kib(status, "VmHWM")
        return rss, peak

    def stop(self) -> None:
        if self in Process.running:
            Process.running.remove(self)
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.pids():
                self.popen.poll()
                time.sleep(0.02)
            if not self.pids():
                break
        self.popen.poll()


def stat_fields(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat from field 3 (state) on, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def field_kib(status: str, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)", status, re.M)
    return int(match.group(1)) if match else 0


def get(url: str, timeout: float = 1.0, headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def first_ok(url: str, proc: Process, within: float, headers: Optional[dict[str, str]] = None) -> float:
    """Seconds from the process's start to the first 200 from url."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"exited with {proc.popen.returncode}; see {proc.log}")
        try:
            if get(url, timeout=0.5, headers=headers)[0] == 200:
                return time.monotonic() - proc.started
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"no 200 from {url} within {within:.0f} s; see {proc.log}")


# ---------------------------------------------------------------- proxies

def upstream_list() -> str:
    return ", ".join(f'"127.0.0.1:{port}"' for port in UPSTREAM_PORTS)


def outrigger_config(workers: int) -> str:
    # Every default feature stays on: metrics, error access log, trace
    # context, breakers, least-load, retries (on 5xx and errors), 3 s timeout.
    return f"""workers: {workers}
listeners:
  outbound: {{ bind: "127.0.0.1:{LISTEN}" }}
  admin: {{ bind: "127.0.0.1:{ADMIN}" }}
lifecycle: {{ drain_delay: 0s }}
defaults:
  timeout: 3s
  load_balancer: least_load
  retry: {{ attempts: 3, on: [connect_error, timeout, 500, 502, 503, 504] }}
services:
  - name: echo
    endpoints: [{upstream_list()}]
"""


def inbound_config(workers: int, public_key: Path, redis: str) -> str:
    # The inbound listener in front of the first replica (the pod's app):
    # RS256 JWTs, a per-user limit no run reaches (exact: one Redis call
    # per request when there is a Redis) and the GET cache (each user's
    # answers apart), with every other default on as for outbound.
    return f"""workers: {workers}
listeners:
  outbound: {{ bind: "127.0.0.1:{LISTEN + 2}" }}
  inbound: {{ bind: "127.0.0.1:{LISTEN}", app: "http://127.0.0.1:{UPSTREAM_PORTS[0]}" }}
  admin: {{ bind: "127.0.0.1:{ADMIN}" }}
lifecycle: {{ drain_delay: 0s }}
inbound:
  auth:
    jwt: {{ algorithms: [RS256], public_key_file: "{public_key}" }}
  rate_limit:
    window: 1m
    default: 100000000
  cache:
    default_ttl: 60s
{redis}"""


def envoy_config(_workers: int, http2: bool = False) -> str:
    return envoy_proxy(LISTEN, UPSTREAM_PORTS, http2=http2)


def envoy_proxy(listen: int, ports: list[int], prefix: str = PREFIX, retries: bool = True,
                downstream_tls: str = "", upstream_tls: str = "", headers: str = "",
                http2: bool = False) -> str:
    """An Envoy from listen to the replicas on ports, the prefix rewritten to
    "/"; TLS blocks and HTTP connection manager settings indented to fit.
    With http2 (--http2, --grpc) the listener takes either protocol and the
    replicas are called over HTTP/2 with prior knowledge."""
    codec = "AUTO" if http2 else "HTTP1"
    upstream_http2 = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
""" if http2 else ""
    hosts = "\n".join(
        f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}"
        for port in ports)
    retry = "\n                  retry_policy: { retry_on: 5xx, num_retries: 2 }" if retries else ""
    downstream_tls += "      " if downstream_tls else ""
    return f"""static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - {downstream_tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: {codec}
{headers}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "{prefix}" }}
                route:
                  cluster: echo
                  prefix_rewrite: "/"
                  timeout: 3s{retry}
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 0.5s
{upstream_tls}{upstream_http2}    lb_policy: LEAST_REQUEST
    outlier_detection: {{ consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50 }}
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
{hosts}
"""


# ---------------------------------------------------------------- --mesh

def mesh_certificates(run: Path) -> dict[str, Path]:
    """The mesh's CA and the two identities it signs (SPIFFE IDs in URI
    SANs, P-256 keys), made with openssl as the tests make theirs."""
    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=run, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-days", "2", "-subj", "/CN=Bench mesh CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "ca.key", "-out", "ca.pem")
    for name, spiffe_id in (("a", MESH_A_ID), ("b", MESH_B_ID)):
        (run / f"{name}.ext").write_text(
            f"subjectAltName=URI:{spiffe_id}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
        openssl("req", *curve, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl("x509", "-req", "-days", "2", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {name: run / name for name in ("ca.pem", "a.pem", "a.key", "b.pem", "b.key")}


def mesh_identity(certs: dict[str, Path], who: str) -> str:
    return (f'mesh:\n  identity: {{ cert_file: "{certs[who + ".pem"]}", key_file: "{certs[who + ".key"]}", '
            f'ca_file: "{certs["ca.pem"]}" }}\n  inbound_port: {MESH_INBOUND}\n')


def outrigger_a(workers: int, certs: Optional[dict[str, Path]]) -> str:
    # The app's sidecar: outbound as in outrigger_config, calling echo on
    # B's inbound listener; meshed, the replica's host at mesh.inbound_port,
    # B's identity required.
    service = (f'    endpoints: ["127.0.0.1:{UPSTREAM_PORTS[0]}"]\n    mesh: true\n    identity: "{MESH_B_ID}"\n'
               if certs else f'    endpoints: ["127.0.0.1:{MESH_INBOUND}"]\n')
    return f"""workers: {workers}
listeners:
  outbound: {{ bind: "127.0.0.1:{LISTEN}" }}
  admin: {{ bind: "127.0.0.1:{ADMIN}" }}
lifecycle: {{ drain_delay: 0s }}
{mesh_identity(certs, "a") if certs else ""}defaults:
  timeout: 3s
  load_balancer: least_load
  retry: {{ attempts: 3, on: [connect_error, timeout, 500, 502, 503, 504] }}
services:
  - name: echo
{service}"""


def outrigger_b(workers: int, certs: Optional[dict[str, Path]]) -> str:
    # The replica's sidecar: its inbound listener in front of the first
    # replica, mutual TLS required when meshed (any identity of the mesh).
    tls = ", tls: { mode: mesh }" if certs else ""
    return f"""workers: {workers}
listeners:
  outbound: {{ bind: "127.0.0.1:{MESH_B_OUTBOUND}" }}
  inbound: {{ bind: "127.0.0.1:{MESH_INBOUND}", app: "http://127.0.0.1:{UPSTREAM_PORTS[0]}"{tls} }}
  admin: {{ bind: "127.0.0.1:{MESH_B_ADMIN}" }}
lifecycle: {{ drain_delay: 0s }}
{mesh_identity(certs, "b") if certs else ""}"""


def envoy_tls(certs: dict[str, Path], who: str, context: str, indent: str, extra: str) -> str:
    """A transport_socket block with who's certificate and the mesh's CA."""
    lines = f"""transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{context}
{extra}    common_tls_context:
      tls_certificates:
      - certificate_chain: {{ filename: "{certs[who + ".pem"]}" }}
        private_key: {{ filename: "{certs[who + ".key"]}" }}
      validation_context:
        trusted_ca: {{ filename: "{certs["ca.pem"]}" }}
"""
    return "".join(indent + line + "\n" for line in lines.splitlines()).lstrip()


def envoy_a(certs: dict[str, Path]) -> str:
    # A: the app's calls to B over mutual TLS, B's identity required, with
    # the route's retries and the cluster's outlier detection as envoy_config.
    match = (f'            match_typed_subject_alt_names: [{{ san_type: URI, matcher: {{ exact: "{MESH_B_ID}" }} }}]\n')
    upstream = "    " + envoy_tls(certs, "a", "UpstreamTlsContext", "    ", "") + match
    return envoy_proxy(LISTEN, [MESH_INBOUND], upstream_tls=upstream)


def envoy_b(certs: dict[str, Path]) -> str:
    # B: mutual TLS required (any identity of the mesh), the caller's
    # SPIFFE ID passed to the app (x-forwarded-client-cert), no retries.
    downstream = envoy_tls(certs, "b", "DownstreamTlsContext", "      ",
                           "    require_client_certificate: true\n")
    headers = ("          forward_client_cert_details: SANITIZE_SET\n"
               "          set_current_client_cert_details: { uri: true }\n")
    return envoy_proxy(MESH_INBOUND, [UPSTREAM_PORTS[0]], prefix="/", retries=False,
                       downstream_tls=downstream, headers=headers)


def second_config(config: Path) -> Path:
    """Where a pair's second process (B) has its config, beside A's."""
    return config.with_stem(config.stem + "-b")


def pair_argv(first: list[str], second: list[str]) -> list[str]:
    """Both processes of a pair in one session (a shell waiting on both), so
    their CPU and memory are read, and they are stopped, together."""
    return ["sh", "-c", f"{shlex.join(second)} & {shlex.join(first)} & wait"]


def nginx_config(workers: int, run: Path) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=5 fail_timeout=30s;"
                        for port in UPSTREAM_PORTS)
    temp = "\n".join(f"    {kind}_temp_path {run}/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""worker_processes {workers};
pid {run}/nginx.pid;
error_log {run}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    # Keep the bench's connections open, as the other proxies do.
    keepalive_requests 10000000;
    upstream echo {{
        least_conn;
{servers}
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{LISTEN};
        location {PREFIX} {{
            proxy_pass http://echo/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 500ms;
            proxy_read_timeout 3s;
            proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 3s;
        }}
    }}
}}
"""


@dataclass
class Proxy:
    name: str
    workers: int
    # (run dir, config path) -> argv; None for the direct path.
    argv: Optional[Callable[[Path, Path], list[str]]]
    config: Optional[Callable[[Path], str]] = None
    # Where readiness is asked; default: the proxied path.
    ready_url: Optional[str] = None
    # The config file's extension (Envoy reads a .yaml as YAML, else JSON).
    ext: str = "conf"
    # A pair (--mesh): the second process's config (written to second_config).
    second: Optional[Callable[[Path], str]] = None


def proxies(args) -> dict[str, Proxy]:
    w = args.workers
    envoy = args.envoy_bin
    outrigger = lambda run, cfg: [str(args.outrigger_bin), "run", "--config", str(cfg)]
    ready = f"http://127.0.0.1:{ADMIN}/ready"
    cluster = ", ".join(f'"redis://127.0.0.1:{port}"' for port in CLUSTER_PORTS)
    inbound = lambda redis: lambda run: inbound_config(w, args.public_key, redis)
    outrigger_pair = lambda run, cfg: pair_argv(outrigger(run, cfg), outrigger(run, second_config(cfg)))
    envoy_argv = lambda cfg: [envoy, "-c", str(cfg), "--concurrency", str(w),
                              "--disable-hot-restart", "--log-level", "error"]
    envoy_pair = lambda run, cfg: pair_argv(envoy_argv(cfg), envoy_argv(second_config(cfg)))
    http2 = args.protocol != "http1"
    return {
        "direct": Proxy("direct", 0, None),
        "outrigger": Proxy(
            "outrigger", w, lambda run, cfg: [str(args.outrigger_bin), "run", "--config", str(cfg)],
            lambda run: outrigger_config(w), f"http://127.0.0.1:{ADMIN}/ready", "yaml"),
        # OUTRIGGER_BASELINE_BIN: another build beside it, to A/B in one run.
        "outrigger-baseline": Proxy(
            "outrigger-baseline", w,
            lambda run, cfg: [str(args.baseline_bin), "run", "--config", str(cfg)],
            lambda run: outrigger_config(w), f"http://127.0.0.1:{ADMIN}/ready", "yaml"),
        "envoy-c1": Proxy(
            "envoy-c1", 1, lambda run, cfg: [envoy, "-c", str(cfg), "--concurrency", "1",
                                             "--disable-hot-restart", "--log-level", "error"],
            lambda run: envoy_config(1, http2), ext="yaml"),
        "envoy-c2": Proxy(
            "envoy-c2", 2, lambda run, cfg: [envoy, "-c", str(cfg), "--concurrency", "2",
                                             "--disable-hot-restart", "--log-level", "error"],
            lambda run: envoy_config(2, http2), ext="yaml"),
        "nginx": Proxy(
            "nginx", w, lambda run, cfg: ["nginx", "-p", str(run), "-c", str(cfg),
                                          "-e", str(run / "error.log"), "-g", "daemon off;"],
            lambda run: nginx_config(w, run)),
        # --inbound
        "inbound-local": Proxy("inbound-local", w, outrigger, inbound(""), ready, "yaml"),
        "inbound-redis": Proxy(
            "inbound-redis", w, outrigger,
            inbound(f'redis: {{ url: "redis://127.0.0.1:{REDIS_PORT}/0" }}\n'), ready, "yaml"),
        "inbound-cluster": Proxy(
            "inbound-cluster", w, outrigger,
            inbound(f"redis: {{ mode: cluster, urls: [{cluster}] }}\n"), ready, "yaml"),
        # --mesh: pairs, ready when a call crosses both
        "outrigger-mtls": Proxy(
            "outrigger-mtls", w, outrigger_pair, lambda run: outrigger_a(w, args.mesh_certs), None, "yaml",
            lambda run: outrigger_b(w, args.mesh_certs)),
        "outrigger-plain": Proxy(
            "outrigger-plain", w, outrigger_pair, lambda run: outrigger_a(w, None), None, "yaml",
            lambda run: outrigger_b(w, None)),
        "envoy-mtls": Proxy(
            "envoy-mtls", w, envoy_pair, lambda run: envoy_a(args.mesh_certs), None, "yaml",
            lambda run: envoy_b(args.mesh_certs)),
    }


# ---------------------------------------------------------------- --inbound

def redis_ping(port: int) -> bool:
    out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
    return out.stdout.strip() == "PONG"


def start_redis(run: Path) -> dict[str, list["Process"]]:
    """A standalone Redis and a cluster of three masters, empty and not
    persisting: the Redis processes behind each inbound proxy."""
    def server(port: int, *extra: str) -> Process:
        data = run / f"redis-{port}"
        data.mkdir(parents=True, exist_ok=True)
        proc = Process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(data), *extra], run / f"redis-{port}.log")
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"redis-server on {port} did not start; see {proc.log}")
            time.sleep(0.05)
        return proc

    standalone = server(REDIS_PORT)
    masters = [server(port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
               for port in CLUSTER_PORTS]
    subprocess.run(["redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{port}" for port in CLUSTER_PORTS),
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 20
    for port in CLUSTER_PORTS:
        while "cluster_state:ok" not in subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok on {port}")
            time.sleep(0.1)
    return {"inbound-redis": [standalone], "inbound-cluster": masters}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rs256_token(run: Path) -> tuple[Path, str]:
    """An RSA key made with openssl: its public half's path, and a token it
    signed for one user, valid for a day."""
    key, public = run / "jwt-key.pem", run / "jwt-public.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(key)], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(public)],
                   check=True, capture_output=True)
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": "bench-user", "exp": int(time.time()) + 86400}).encode())
    signed = f"{header}.{claims}".encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signed,
                               check=True, capture_output=True).stdout
    return public, f"{header}.{claims}.{b64url(signature)}"


# ---------------------------------------------------------------- load

LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def header_argv(headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]


def run_wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
            *header_argv(headers), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    if not total:
        raise RuntimeError(f"wrk printed no totals:\n{out}")
    requests = int(total.group(1))
    wall = float(total.group(2)) * UNIT_US[total.group(3)] / 1e6
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = {p: float(v) * UNIT_US[u] for p, v, u in LATENCY.findall(out)}
    return {
        "requests": requests, "rps": requests / wall,
        "p50_us": latency.get("50"), "p99_us": latency.get("99"), "p999_us": None,
        "errors": (int(bad.group(1)) if bad else 0)
                  + (sum(int(g) for g in errors.groups()) if errors else 0),
    }


H2LOAD_TOTALS = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
H2LOAD_COUNTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx")


def run_h2load(url: str, connections: int, streams: int, seconds: float, headers: dict[str, str],
               body: Optional[Path]) -> dict:
    """Closed loop over HTTP/2: `connections` connections with `streams`
    streams in flight on each (h2load gives no percentiles)."""
    argv = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{seconds:g}",
            *header_argv(headers), *(["-d", str(body)] if body else []), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    totals, counts = H2LOAD_TOTALS.search(out), H2LOAD_COUNTS.search(out)
    if not totals or not counts:
        raise RuntimeError(f"h2load printed no totals:\n{out}")
    done = int(counts.group(2))
    ok = H2LOAD_STATUS.search(out)
    return {
        "requests": done, "rps": float(totals.group(2)),
        "p50_us": None, "p99_us": None, "p999_us": None,
        "errors": done - (int(ok.group(1)) if ok else 0),
    }


def run_oha(oha: str, url: str, rate: int, seconds: float, headers: dict[str, str],
            http2: bool = False, body: Optional[Path] = None) -> dict:
    # Requests still in flight when the time is up are waited for, not
    # cancelled: oha would count each cancelled one as an error. Over
    # HTTP/2, 2 connections carry 8 streams each.
    workers = ["--http2", "-c", "2", "-p", "8"] if http2 else ["-c", "16"]
    request = ["-m", "POST", "-D", str(body)] if body else []
    argv = [oha, "-z", f"{seconds:g}s", "-q", str(rate), *workers, "--latency-correction",
            "--wait-ongoing-requests-after-deadline", *request,
            "--no-tui", "--output-format", "json", "--worker-threads", "1", *header_argv(headers), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    data = json.loads(out[out.index("{"):])
    codes = data.get("statusCodeDistribution", {})
    requests = sum(codes.values())
    ok = sum(n for code, n in codes.items() if code.startswith("2"))
    pct = data.get("latencyPercentiles", {})
    us = lambda key: None if pct.get(key) is None else pct[key] * 1e6
    return {
        "requests": requests, "rps": requests / (data["summary"].get("total") or seconds),
        "p50_us": us("p50"), "p99_us": us("p99"), "p999_us": us("p99.9"),
        # Over HTTP/2 oha still cancels a few calls in flight at the
        # deadline ("aborted due to deadline"): its own doing, not an error.
        "errors": requests - ok + sum(n for kind, n in data.get("errorDistribution", {}).items()
                                      if kind != "aborted due to deadline"),
    }


# ---------------------------------------------------------------- one pass

def bench_one(args, proxy: Proxy, round_no: int, results: Path) -> list[dict]:
    rows = []
    base = {"round": round_no, "proxy": proxy.name, "workers": proxy.workers}
    proc = None
    startup_ms = rss_rest = None
    if proxy.argv is None:
        url = f"http://127.0.0.1:{UPSTREAM_PORTS[0]}/"
    else:
        run = results / "run" / f"{proxy.name}-{round_no}"
        run.mkdir(parents=True, exist_ok=True)
        config = run / f"{proxy.name}.{proxy.ext}"
        config.write_text(proxy.config(run) if proxy.config else "")
        if proxy.second:
            second_config(config).write_text(proxy.second(run))
        url = f"http://127.0.0.1:{LISTEN}{PREFIX}"
        proc = Process(proxy.argv(run, config), run / "log", cwd=run)
        try:
            startup_ms = 1000 * first_ok(proxy.ready_url or url, proc, 20, args.headers)
            if proxy.ready_url:
                first_ok(url, proc, 5, args.headers)
        except Exception:
            proc.stop()  # the next proxy needs its ports
            raise
        time.sleep(1)
        rss_rest = proc.memory_kib()[0]
    # --inbound: the Redis servers behind the proxy, their CPU counted apart.
    backing = args.backing.get(proxy.name, [])
    headers = args.headers
    try:
        # A plain GET (--grpc too: the replicas answer it as such).
        status, body = get(url, headers=headers if args.protocol != "grpc" else None)
        if status != 200 or body != b"ok\n":
            raise RuntimeError(f"GET {url}: {status} {body!r}")
        if args.protocol == "http1":
            closed_loop = lambda c, seconds: run_wrk(url, c, seconds, headers)
        else:
            if args.protocol == "grpc":
                url += GRPC_METHOD
            closed_loop = lambda c, seconds: run_h2load(url, c, args.streams, seconds, headers,
                                                        args.grpc_body)
        closed_loop(min(args.connections), args.warmup)
        runs = [(f"c{c}", lambda c=c: closed_loop(c, args.duration)) for c in args.connections]
        if args.rate and args.oha_bin:
            runs.append((f"rate{args.rate}",
                         lambda: run_oha(args.oha_bin, url, args.rate, args.duration, headers,
                                         args.protocol != "http1", args.grpc_body)))
        for label, load in runs:
            before = proc.cpu_seconds() if proc else None
            redis_before = sum(sum(p.cpu_seconds()) for p in backing)
            figures = load()
            after = proc.cpu_seconds() if proc else None
            redis_cpu = sum(sum(p.cpu_seconds()) for p in backing) - redis_before
            rss, peak = proc.memory_kib() if proc else (None, None)
            user = system = None
            if proc:
                requests = max(figures["requests"], 1)
                user, system = (1e6 * (a - b) / requests for a, b in zip(after, before))
            row = dict(base, load=label, **figures,
                       cpu_us_per_req=None if proc is None else user + system,
                       redis_cpu_us_per_req=1e6 * redis_cpu / max(figures["requests"], 1) if backing else None,
                       user_us_per_req=user, sys_us_per_req=system,
                       startup_ms=startup_ms, rss_rest_kib=rss_rest, rss_peak_kib=peak)
            rows.append(row)
            note(f"r{round_no} {proxy.name:<10} {label:<9} {row['rps']:>9,.0f} req/s  "
                 f"p50 {fmt(row['p50_us'])} µs  p99 {fmt(row['p99_us'])} µs  "
                 f"cpu {fmt(row['cpu_us_per_req'], 1)} µs/req  errors {row['errors']}")
            if proc and not proc.alive():
                raise RuntimeError(f"{proxy.name} exited during {label}")
    finally:
        if proc:
            proc.stop()
    return rows


def replica_counts() -> list[int]:
    """How many requests each replica has served since it started."""
    return [json.loads(get(f"http://127.0.0.1:{p}/__count")[1])["requests"] for p in UPSTREAM_PORTS]


# ---------------------------------------------------------------- summary

def spread(split: dict[str, list[int]], known: dict[str, Proxy]) -> str:
    """Each proxy's share of its requests per replica: how evenly it balanced."""
    parts = []
    for name, served in split.items():
        total = sum(served)
        if known[name].argv is None or total == 0:  # the direct path calls one replica
            continue
        shares = " / ".join(f"{100 * n / total:.0f}%" for n in served)
        parts.append(f"{name} {shares}")
    if not parts:
        return ""
    return f"\nShare of each proxy's requests per replica: {'; '.join(parts)}.\n"


def fmt(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def same_round_ratio(rows, name, load, key, base) -> Optional[float]:
    ratios = []
    for row in rows:
        if row["proxy"] != name or row["load"] != load or row.get(key) is None:
            continue
        ref = next((r for r in rows if r["proxy"] == base and r["load"] == load
                    and r["round"] == row["round"]), None)
        if ref and ref.get(key):
            ratios.append(row[key] / ref[key])
    return statistics.median(ratios) if ratios else None


def summarize(rows: list[dict], names: list[str], reference: str) -> list[dict]:
    out = []
    loads = list(dict.fromkeys(r["load"] for r in rows))
    for name in names:
        for load in loads:
            mine = [r for r in rows if r["proxy"] == name and r["load"] == load]
            if not mine:
                continue
            med = lambda key: statistics.median([r[key] for r in mine if r.get(key) is not None] or [0]) \
                if any(r.get(key) is not None for r in mine) else None
            added = lambda key: [r[key] - d[key] for r in mine for d in rows
                                 if d["proxy"] == "direct" and d["load"] == load and d["round"] == r["round"]
                                 and r[key] is not None and d[key] is not None]
            entry = {"proxy": name, "load": load, "rounds": len(mine), "workers": mine[0]["workers"]}
            for key in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_req", "user_us_per_req",
                        "sys_us_per_req", "redis_cpu_us_per_req", "errors", "startup_ms", "rss_rest_kib", "rss_peak_kib"):
                entry[key] = med(key)
            for key in ("p50_us", "p99_us"):
                entry[f"added_{key}"] = (statistics.median(added(key)) if added(key) and name != "direct"
                                         else None)
            for key in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_req",
                        "rss_rest_kib", "rss_peak_kib", "startup_ms"):
                entry[f"{key}_vs_envoy"] = same_round_ratio(rows, name, load, key, reference)
                entry[f"{key}_vs_direct"] = same_round_ratio(rows, name, load, key, "direct")
            out.append(entry)
    return out


def markdown(args, rows: list[dict], summary: list[dict], started: str) -> str:
    by = {(s["proxy"], s["load"]): s for s in summary}
    names = list(dict.fromkeys(s["proxy"] for s in summary))
    ratio = lambda s, key: "" if not s or s.get(key) is None else f" ({s[key]:.2f}x)"
    streams = "" if args.protocol == "http1" else f"×{args.streams}"
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.*)", cpu)
    lines = [f"## bench/run.sh, {started}, {model.group(1) if model else '?'}, {os.cpu_count()} CPUs",
             "",
             f"{args.rounds} round(s), proxies interleaved; {args.duration:g} s per run; medians over "
             f"rounds. In brackets: the same figure divided by {args.reference}'s in the same round "
             "(req/s: higher is better; everything else: lower is better).", "",
             "| proxy | workers | " + " | ".join(f"c{c}{streams} req/s" for c in args.connections)
             + f" | c1 p50 added µs | c{args.connections[-1]} p99 µs | CPU µs/req c{args.connections[-1]} |"
             + (f" {args.rate}/s p50 / p99 / p99.9 µs | CPU µs/req at {args.rate}/s |" if args.oha_bin and args.rate else "")
             + (f" Redis CPU µs/req at {args.rate}/s |" if args.inbound and args.oha_bin and args.rate else "")
             + (f" p50 / p99 added µs at {args.rate}/s |" if args.mesh and args.oha_bin and args.rate else "")
             + " RSS rest / peak MiB | start to ready ms |",
             ]
    columns = lines[-1].count("|") - 1
    lines.append("|" + "---|" * columns)
    top = f"c{args.connections[-1]}"
    rate = f"rate{args.rate}"
    for name in names:
        cells = [name, str(by.get((name, top), {}).get("workers") or "–")]
        for c in args.connections:
            s = by.get((name, f"c{c}"))
            cells.append(fmt(s and s["rps"]) + ratio(s, "rps_vs_envoy"))
        c1 = by.get((name, "c1"))
        cells.append(fmt(c1 and c1["added_p50_us"]))
        s = by.get((name, top))
        cells.append(fmt(s and s["p99_us"]) + ratio(s, "p99_us_vs_envoy"))
        cells.append(fmt(s and s["cpu_us_per_req"], 1) + ratio(s, "cpu_us_per_req_vs_envoy"))
        if args.oha_bin and args.rate:
            r = by.get((name, rate))
            cells.append(" / ".join(fmt(r and r[k]) for k in ("p50_us", "p99_us", "p999_us"))
                         + ratio(r, "p99_us_vs_envoy"))
            cells.append(fmt(r and r["cpu_us_per_req"], 1) + ratio(r, "cpu_us_per_req_vs_envoy"))
            if args.inbound:
                cells.append(fmt(r and r["redis_cpu_us_per_req"], 1))
            if args.mesh:
                cells.append(" / ".join(fmt(r and r[k]) for k in ("added_p50_us", "added_p99_us")))
        rest, peak = (s or {}).get("rss_rest_kib"), (s or {}).get("rss_peak_kib")
        cells.append("–" if rest is None else f"{rest / 1024:.1f} / {max(peak or 0, rest) / 1024:.1f}")
        cells.append(fmt(s and s["startup_ms"]))
        lines.append("| " + " | ".join(cells) + " |")
    if args.oha_bin and args.rate:
        split = [f"{name} {fmt(r['user_us_per_req'], 1)} + {fmt(r['sys_us_per_req'], 1)}"
                 for name in names if (r := by.get((name, rate))) and r.get("user_us_per_req") is not None]
        if split:
            lines += ["", f"CPU µs per request at {args.rate}/s, user + system (from /proc, "
                          "counted in clock ticks): " + "; ".join(split) + "."]
    errors = [f"{s['proxy']} {s['load']}: {s['errors']:.0f} errors (median per round)"
              for s in summary if s.get("errors")]
    if errors:
        lines += ["", "Errors: " + "; ".join(errors)]
    if args.protocol != "http1":
        lines += ["", ("Unary gRPC calls" if args.protocol == "grpc" else "GET requests")
                  + f" over HTTP/2 with prior knowledge, to the proxy and from it to the replicas: "
                  f"closed loop with h2load, c<N>{streams} = N connections with {args.streams} streams "
                  "in flight on each (h2load reports no percentiles); fixed rate with oha --http2, "
                  "2 connections of 8 streams." + (" Each call is routed by its path's first "
                  "segment (/echo/bench.Echo/Unary), answered with one message and grpc-status 0 "
                  "in trailers." if args.protocol == "grpc" else "")]
    if args.inbound:
        lines += ["", "Inbound listener in front of one replica (direct: that replica alone): RS256 JWT, "
                      "a per-user limit of 100,000,000 a minute (exact), the GET cache; one user, so one "
                      "window and one cached answer (on one master of the cluster). inbound-local: no "
                      "Redis (in-process store); inbound-redis: a standalone Redis; inbound-cluster: "
                      "3 masters. Redis CPU: the Redis servers' own, beside the sidecar's."]
    if args.mesh:
        lines += ["", "The app's call across two sidecars, A's outbound listener to B's inbound listener in "
                      "front of one replica (direct: that replica alone); each pair's two processes counted "
                      "together (CPU, RSS), each with the workers given. outrigger-mtls: mutual TLS between "
                      "A and B (A requires B's SPIFFE ID, B any of the mesh's); envoy-mtls: two Envoys with "
                      "the same certificates and checks in a static config; outrigger-plain: the Outrigger "
                      "pair in plain text."]
        overhead = [f"{label} {value:.2f}x" for load, label in ((top, top), (rate, f"at {args.rate}/s"))
                    if (value := same_round_ratio(rows, "outrigger-mtls", load, "cpu_us_per_req",
                                                  "outrigger-plain")) is not None]
        if overhead:
            lines += ["", "CPU µs per request of outrigger-mtls over outrigger-plain in the same round: "
                          + "; ".join(overhead) + "."]
    busy = os.getloadavg()[0]
    lines += ["", f"Load average at the end: {busy:.1f} (over {os.cpu_count()} CPUs: other work "
                  "running alongside makes every figure noisier)." if busy > 0.5 * (os.cpu_count() or 1)
              else ""]
    return "\n".join(lines).rstrip() + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- main

def parse(argv: list[str]):
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per run (default 10)")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up seconds after each start (default 2)")
    ap.add_argument("--connections", default=None,
                    help="closed-loop connection counts (default 1,16,64; 1,4 with --http2 or --grpc)")
    ap.add_argument("--rate", type=int, default=None,
                    help="fixed-rate req/s with oha; 0: none (default 5000, 1000 with --inbound, "
                         "2000 with --mesh)")
    ap.add_argument("--workers", type=int, default=1,
                    help="workers of outrigger and nginx (default 1; Envoy runs as c1 and c2)")
    ap.add_argument("--proxies", default=None,
                    help="which to run, in this order (default: all five; with --inbound: direct, "
                         "inbound-local, inbound-redis, inbound-cluster; with --mesh: direct, "
                         "outrigger-mtls, outrigger-plain, envoy-mtls)")
    ap.add_argument("--inbound", action="store_true",
                    help="the inbound listener with JWT, rate limit and cache, without Redis, "
                         "with a standalone Redis and with a 3-master cluster")
    ap.add_argument("--mesh", action="store_true",
                    help="the app's call across two sidecars: Outrigger with mutual TLS, two Envoys "
                         "with the same static mutual TLS, and Outrigger in plain text")
    ap.add_argument("--http2", action="store_true",
                    help="HTTP/2 (h2c) from the callers and to the replicas: h2load and oha --http2")
    ap.add_argument("--grpc", action="store_true",
                    help="unary gRPC calls over HTTP/2 (as --http2, with a gRPC request and answer)")
    ap.add_argument("--streams", type=int, default=16,
                    help="--http2, --grpc: streams in flight per connection (default 16)")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s runs, 1 s warm-up")
    ap.add_argument("--out", default=str(BENCH / "results"), help="results directory (default bench/results)")
    args = ap.parse_args(argv)
    if sum((args.inbound, args.mesh, args.http2, args.grpc)) > 1:
        ap.error("--inbound, --mesh, --http2 and --grpc are separate runs: choose one")
    args.protocol = "grpc" if args.grpc else "http2" if args.http2 else "http1"
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 1.0
    if args.rate is None:
        args.rate = 1000 if args.inbound else 2000 if args.mesh else 5000
    if args.connections is None:
        args.connections = "1,16,64" if args.protocol == "http1" else "1,4"
    if args.proxies is None:
        args.proxies = ("direct,inbound-local,inbound-redis,inbound-cluster" if args.inbound
                        else "direct,outrigger-mtls,outrigger-plain,envoy-mtls" if args.mesh
                        else "direct,outrigger,envoy-c1,envoy-c2,nginx" if args.protocol == "http1"
                        else "direct,outrigger,envoy-c1,envoy-c2")
    args.reference = INBOUND_REFERENCE if args.inbound else MESH_REFERENCE if args.mesh else REFERENCE
    # Set in main for --inbound: the request headers, the JWT key, the Redis
    # servers; for --mesh: the certificates; for --grpc: the headers and the
    # request body's file.
    args.headers, args.public_key, args.backing, args.mesh_certs = {}, None, {}, None
    args.grpc_body = None
    args.connections = [int(c) for c in args.connections.split(",")]
    tools = BENCH / ".tools"
    # Absolute: each proxy starts in its own run directory.
    args.outrigger_bin = Path(os.environ.get("OUTRIGGER_BIN") or TOP / "target" / "release" / "outrigger").resolve()
    args.envoy_bin = os.environ.get("ENVOY_BIN") or str(tools / "envoy" / "envoy" / "_bin" / "envoy")
    baseline = os.environ.get("OUTRIGGER_BASELINE_BIN")
    args.baseline_bin = Path(baseline).resolve() if baseline else None
    if args.baseline_bin and "outrigger-baseline" not in args.proxies:
        args.proxies = args.proxies.replace("outrigger,", "outrigger,outrigger-baseline,", 1)
    oha = tools / "bin" / "oha"
    args.oha_bin = str(oha) if oha.exists() else next(
        (str(Path(d) / "oha") for d in os.environ.get("PATH", "").split(":") if (Path(d) / "oha").exists()), None)
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    known = proxies(args)
    names = [n.strip() for n in args.proxies.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown proxies {unknown}; known: {', '.join(known)}")
    if args.rate and not args.oha_bin:
        note("no oha: fixed-rate runs skipped")
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = Path(args.out) / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True)

    def on_signal(signum, _):
        for proc in list(Process.running):
            proc.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    binary = BENCH / "upstream" / "target" / "release" / "outrigger-bench-upstream"
    upstreams = []
    rows: list[dict] = []
    split: dict[str, list[int]] = {}
    failures = []
    try:
        (results / "run").mkdir()
        if args.protocol == "grpc":
            args.grpc_body = results / "run" / "grpc-request"
            args.grpc_body.write_bytes(GRPC_REQUEST)
            args.headers = {"content-type": "application/grpc", "te": "trailers"}
        if args.inbound:
            args.public_key, token = rs256_token(results / "run")
            args.headers = {"authorization": f"Bearer {token}"}
            if any(known[n].name in ("inbound-redis", "inbound-cluster") for n in names):
                args.backing = start_redis(results / "run")
        if args.mesh:
            args.mesh_certs = mesh_certificates(results / "run")
        for port in UPSTREAM_PORTS:
            upstreams.append(Process([str(binary), str(port)], results / "run" / f"upstream-{port}.log"))
            first_ok(f"http://127.0.0.1:{port}/__count", upstreams[-1], 10)
        for round_no in range(1, args.rounds + 1):
            for name in names:
                before = replica_counts()
                try:
                    rows += bench_one(args, known[name], round_no, results)
                except Exception as err:  # the other proxies still run
                    failures.append(f"round {round_no} {name}: {err}")
                    note(failures[-1])
                served = split.setdefault(name, [0] * len(UPSTREAM_PORTS))
                for i, (b, a) in enumerate(zip(before, replica_counts())):
                    served[i] += a - b
    finally:
        for proc in list(Process.running):
            proc.stop()
    if not rows:
        print("\n".join(failures), file=sys.stderr)
        return 1
    summary = summarize(rows, names, args.reference)
    write_csv(results / "raw.csv", rows)
    write_csv(results / "summary.csv", summary)
    text = markdown(args, rows, summary, started)
    if not (args.inbound or args.mesh):  # these call one replica
        text += spread(split, known)
    if failures:
        text += "\nFailed: " + "; ".join(failures) + "\n"
    (results / "summary.md").write_text(text)
    print(text)
    note(f"CSV and summary in {results}")
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
