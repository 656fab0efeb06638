#!/usr/bin/env bash
# Soak test (not part of CI): the release sidecar with its outbound and
# inbound listeners, three upstream replicas, an app and a private Redis,
# under mixed load for 10 minutes (or --duration), with a fault every 30 s:
# a replica killed and restarted, Redis frozen (SIGSTOP/SIGCONT), a replica
# made slow. Every 10 s it samples the sidecar's RSS, open file descriptors
# and metric series. At the end it prints and writes a summary: requests,
# failures by cause, the samples, and PASS when no request failed
# unexpectedly and RSS ended within 10% of its level after warm-up (FAIL and
# exit 1 otherwise).
#
#   scripts/soak.sh [--duration 10m|90s|600] [--out DIR]
#
# Output goes to target/soak/<UTC time>/ (summary.txt, samples.csv,
# load.json, faults.log, sidecar.log, sidecar.yaml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FAULT_EVERY=30
SAMPLE_EVERY=10
# Load clients; each has one request in flight at a time.
CLIENTS=8
duration=600
out=""

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'soak: %s\n' "$*" >&2; exit 2; }

seconds_of() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) [ $# -ge 2 ] || die "--duration needs a value"; duration=$(seconds_of "$2"); shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done
[[ "$duration" =~ ^[0-9]+$ ]] && [ "$duration" -ge 40 ] \
  || die "--duration must be at least 40s (warm-up, then faults), got $duration"
out=${out:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

for tool in redis-server curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "installing $tool"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
      apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  fi
done

log "building the release sidecar and the soak replica/load tool"
cargo build --release --quiet --bin outrigger --example soak
sidecar_bin=target/release/outrigger
soak_bin=target/release/examples/soak

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Every process this script starts leaves its pid in $out/pids/<name>.
mkdir -p "$out/pids"
started() { echo "$2" > "$out/pids/$1"; }
cleanup() {
  for file in "$out"/pids/*; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  >"$out/redis.log" 2>&1 &
started redis $!

replica_ports=()
start_replica() { # index port; detached, so killing it is not reported as a job
  ( "$soak_bin" replica --port "$2" >>"$out/replica-$1.log" 2>&1 &
    started "replica-$1" $! )
}
for i in 0 1 2; do
  replica_ports[$i]=$(free_port)
  start_replica "$i" "${replica_ports[$i]}"
done
app_port=$(free_port)
"$soak_bin" replica --port "$app_port" >"$out/app.log" 2>&1 &
started app $!

outbound_port=$(free_port); inbound_port=$(free_port); admin_port=$(free_port)
endpoints=$(printf '"127.0.0.1:%s", ' "${replica_ports[@]}"); endpoints=${endpoints%, }
cat >"$out/sidecar.yaml" <<EOF
listeners:
  outbound: { bind: "127.0.0.1:$outbound_port" }
  inbound: { bind: "127.0.0.1:$inbound_port", app: "http://127.0.0.1:$app_port" }
  admin: { bind: "127.0.0.1:$admin_port" }
redis: { url: "redis://127.0.0.1:$redis_port/0", timeout: 100ms }
services:
  - name: api
    endpoints: [$endpoints]
    circuit_breaker: { cooldown: 5s }
inbound:
  auth:
    api_keys: { header: x-api-key }
  rate_limit:
    window: 1m
    roles: { admin: 100000000 }
    routes: [{ path: /limited, limit: 600 }]
  cache:
    default_ttl: 5s
EOF
admin="http://127.0.0.1:$admin_port"
OUTRIGGER_API_KEYS="soak:k-soak:admin" LOG_LEVEL=warn \
  "$sidecar_bin" run --config "$out/sidecar.yaml" 2>"$out/sidecar.log" &
sidecar_pid=$!
started sidecar "$sidecar_pid"
for _ in $(seq 150); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/ready")" = 200 ] && break
  kill -0 "$sidecar_pid" 2>/dev/null || die "the sidecar exited; see $out/sidecar.log"
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/ready")" = 200 ] || die "the sidecar never got ready"

log "soaking for ${duration}s; output in $out"
"$soak_bin" load --outbound "http://127.0.0.1:$outbound_port" \
  --inbound "http://127.0.0.1:$inbound_port" --api-key k-soak --seconds "$duration" \
  --clients "$CLIENTS" >"$out/load.json" 2>"$out/load.log" &
load_pid=$!
started load "$load_pid"

# A fault every FAULT_EVERY seconds from the start of the load, in turn;
# each ends before the next begins.
inject_faults() {
  local n=0 start
  start=$(date +%s)
  while :; do
    local wait=$(( start + (n + 1) * FAULT_EVERY - $(date +%s) ))
    [ "$wait" -le 0 ] || sleep "$wait"
    case $((n % 3)) in
      0) echo "$(date -u +%T) kill replica 0, restart it 5 s later" >>"$out/faults.log"
         kill -KILL "$(cat "$out/pids/replica-0")" 2>/dev/null || true
         sleep 5
         start_replica 0 "${replica_ports[0]}" ;;
      1) echo "$(date -u +%T) freeze Redis (SIGSTOP) for 5 s" >>"$out/faults.log"
         kill -STOP "$(cat "$out/pids/redis")"
         sleep 5
         kill -CONT "$(cat "$out/pids/redis")" ;;
      2) echo "$(date -u +%T) replica 1 answers 300 ms late for 10 s" >>"$out/faults.log"
         curl -s -o /dev/null -X PUT "http://127.0.0.1:${replica_ports[1]}/delay?ms=300"
         sleep 10
         curl -s -o /dev/null -X PUT "http://127.0.0.1:${replica_ports[1]}/delay?ms=0" ;;
    esac
    n=$((n + 1))
  done
}
: >"$out/faults.log"
inject_faults &
started faults $!

echo "seconds,rss_kib,fds,metric_series" >"$out/samples.csv"
sample() {
  local rss fds series
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$sidecar_pid/status")
  fds=$(find "/proc/$sidecar_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  series=$(curl -s "$admin/metrics" | grep -vc '^#' || true)
  echo "$1,$rss,$fds,$series" >>"$out/samples.csv"
  log "t=${1}s rss=${rss} KiB fds=$fds series=$series"
}
begin=$(date +%s)
sample 0
while kill -0 "$load_pid" 2>/dev/null; do
  sleep "$SAMPLE_EVERY"
  kill -0 "$sidecar_pid" 2>/dev/null || die "the sidecar died; see $out/sidecar.log"
  sample $(( $(date +%s) - begin ))
done
wait "$load_pid" || die "the load tool failed; see $out/load.log"
kill "$(cat "$out/pids/faults")" 2>/dev/null || true
curl -s "$admin/metrics" >"$out/metrics.txt"

python3 - "$out" "$duration" "$CLIENTS" <<'PY'
import csv, json, sys
out, duration, clients = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tally = json.load(open(f"{out}/load.json"))
samples = list(csv.DictReader(open(f"{out}/samples.csv")))
faults = open(f"{out}/faults.log").read().strip().splitlines()
metrics = [l for l in open(f"{out}/metrics.txt") if not l.startswith("#")]
expected = {"inbound_limited": {"429"}}
lines = [f"soak of {duration}s: {len(faults)} faults injected"]
total = sum(sum(s.values()) for s in tally.values())
failed = {}
lines.append(f"requests: {total}")
for kind, statuses in sorted(tally.items()):
    lines.append(f"  {kind}: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    for status, n in statuses.items():
        if not status.startswith("2") and status not in expected.get(kind, ()):
            failed[status] = failed.get(status, 0) + n
# A POST in flight to the replica when it is killed gets 502: it is not
# retried (the replica may have acted on it). At most one per client per kill.
kills = sum(1 for f in faults if " kill replica " in f)
cut_posts = tally.get("outbound_post", {}).get("502", 0)
cut_bound = kills * clients
if 0 < cut_posts <= cut_bound:
    failed["502"] -= cut_posts
    if failed["502"] == 0:
        del failed["502"]
lines.append(f"POSTs cut by a replica kill (502, not retried; expected, at most {clients} clients x "
             f"{kills} kills = {cut_bound}): {cut_posts}")
lines.append("unexpected failures (429 from the /limited route is expected too): "
             + (", ".join(f"{s}: {n}" for s, n in sorted(failed.items())) or "none")
             + f" ({sum(failed.values())} of {total})")
lines.append("faults:")
lines += [f"  {f}" for f in faults]
lines.append("samples (seconds, RSS KiB, fds, metric series):")
lines += [f"  {s['seconds']:>5} {s['rss_kib']:>8} {s['fds']:>5} {s['metric_series']:>5}" for s in samples]
warm_at = min(60, duration // 3)
warm = next(s for s in samples if int(s["seconds"]) >= warm_at)
end = samples[-1]
warm_rss, end_rss = int(warm["rss_kib"]), int(end["rss_kib"])
lines.append(f"file descriptors: {samples[0]['fds']} at start, {end['fds']} at the end")
lines.append(f"metric series: {samples[0]['metric_series']} at start, {end['metric_series']} at the end")
for name in ("upstream_errors_total", "retries_total", "circuit_breaker_transitions_total",
             "redis_errors_total", "rate_limited_total", "cache_hits_total"):
    total_of = sum(float(l.rsplit(" ", 1)[1]) for l in metrics if l.startswith(f"outrigger_{name}"))
    lines.append(f"  outrigger_{name}: {total_of:g}")
verdict = "PASS" if end_rss <= warm_rss * 1.10 and not failed else "FAIL"
lines.append(f"RSS {warm_rss} KiB after warm-up (t={warm['seconds']}s), {end_rss} KiB at the end "
             f"({(end_rss - warm_rss) * 100 / warm_rss:+.1f}%, limit +10%), "
             f"{sum(failed.values())} unexpected failures: {verdict}")
text = "\n".join(lines) + "\n"
open(f"{out}/summary.txt", "w").write(text)
print(text, end="")
sys.exit(0 if verdict == "PASS" else 1)
PY
