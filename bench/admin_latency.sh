#!/usr/bin/env bash
# Admin API write latency with a large route table (issue 4's targets:
# PUT 2xx -> served p99 <= 100 ms, snapshot rebuild <= 50 ms). See
# docs/benchmarks.md, "Admin API: write to served".
#
#   bench/admin_latency.sh [--routes N] [--writes W] [--no-build] [--bin PATH]
#                          [--no-rebuild-example] [--no-pin] [--keep]
#
# 1. `portcullis import` N routes (default 10000) into a fresh store, then
#    `portcullis serve` it (store mode, workers: 1, pinned to CPU 0);
# 2. W times (default 100): PUT a new route through the Admin API, then poll
#    its path on the data plane until served; median and p99 of PUT round
#    trip and of 2xx -> first served response (bench/admin_latency.py);
# 3. `cargo run --release -p portcullis-config --example snapshot_rebuild -- N`:
#    the cold build and the one-route-changed rebuild of the same table.
#
# With 2+ CPUs portcullis is pinned to CPU 0 and the upstream and the client
# to CPU 1 (as bench/compare.sh does); --no-pin lets them all float.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"

routes=10000 writes=100 build=1 bin= rebuild_example=1 keep=0 pin=1
usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --routes) routes=$2; shift 2 ;;
    --writes) writes=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin) bin=$2; build=0; shift 2 ;;
    --no-rebuild-example) rebuild_example=0; shift ;;
    --no-pin) pin=0; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "admin_latency.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

BENCH_NAME=admin_latency.sh
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

install_missing nginx:nginx-light taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null 2>&1 || die "python3 is required"
cpus=$(nproc)
pin_gw=() pin_load=()
if [ "$cpus" -ge 2 ] && [ "$pin" -eq 1 ]; then pin_gw=(taskset -c 0) pin_load=(taskset -c 1); fi

target_dir=$(target_dir "$ROOT")
BIN=${bin:-$target_dir/release/portcullis}
if [ "$build" -eq 1 ]; then
  say "cargo build --release -p portcullis (fat LTO: a few minutes on 2 cores)"
  (cd "$ROOT" && cargo build --release -p portcullis)
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"

# --- processes and clean-up (lib.sh: stopped on exit, $work removed unless --keep)
make_work_dir
now_ms() { python3 -c 'import time; print(int(time.time()*1000))'; }

read -r up_port pc_port pc_admin pc_metrics <<<"$(free_ports 4)"
key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# --- upstream ---------------------------------------------------------------------
python3 "$BENCH/gen.py" upstream "$work/upstream.conf" --work "$work" --port "$up_port"
say "upstream nginx on :$up_port"
"${pin_load[@]}" "$NGINX" -p "$work" -c "$work/upstream.conf" -e "$work/upstream.error.log" >"$work/upstream.out" 2>&1 &
pids+=("$!")
wait_port "$up_port" "$!" upstream

# --- store with N routes ------------------------------------------------------------
cat >"$work/portcullis.yaml" <<EOF
gateway:
  listen: ["127.0.0.1:$pc_port"]
  admin:
    listen: "127.0.0.1:$pc_admin"
    keys:
      - { name: bench, key: "$key", role: admin }
  metrics:
    listen: "127.0.0.1:$pc_metrics"
  config_source: store
  data_dir: "$work/data"
  workers: 1
  access_log: "off"
  log_level: warn
EOF
python3 "$BENCH/admin_latency.py" gen "$work/routes.yaml" --routes "$routes" --upstream "127.0.0.1:$up_port"
say "portcullis import: $routes routes"
t0=$(now_ms)
"$BIN" import "$work/routes.yaml" --config "$work/portcullis.yaml" 2>"$work/import.err" ||
  { cat "$work/import.err" >&2; die "import failed"; }
import_ms=$(( $(now_ms) - t0 ))

say "portcullis serve (store mode, $routes routes)"
t0=$(now_ms)
"${pin_gw[@]}" "$BIN" serve --config "$work/portcullis.yaml" >"$work/portcullis.out" 2>&1 &
pc_pid=$!; pids+=("$pc_pid")
wait_port "$pc_admin" "$pc_pid" portcullis
wait_port "$pc_port" "$pc_pid" portcullis
startup_ms=$(( $(now_ms) - t0 ))
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$pc_port/r$((routes - 1))/x" || true)
[ "$code" = 200 ] || die "the last imported route answered $code (want 200); logs in $work (use --keep)"
total=$(curl -s -H "X-API-KEY: $key" "http://127.0.0.1:$pc_admin/apisix/admin/routes?page=1&page_size=10" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
[ "$total" = "$routes" ] || die "the store holds $total routes, want $routes"

# --- measure ------------------------------------------------------------------------
say "$writes writes: PUT -> 2xx -> first request served"
"${pin_load[@]}" python3 "$BENCH/admin_latency.py" measure --admin "http://127.0.0.1:$pc_admin" \
  --data "http://127.0.0.1:$pc_port" --key "$key" --writes "$writes" --json "$work/latency.json" >/dev/null
rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pc_pid/status")
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

rebuild_line="(skipped: --no-rebuild-example)"
if [ "$rebuild_example" -eq 1 ]; then
  say "cargo run --release -p portcullis-config --example snapshot_rebuild -- $routes"
  rebuild_line=$(cd "$ROOT" && cargo run --quiet --release -p portcullis-config --example snapshot_rebuild -- "$routes" 2>"$work/rebuild.err") ||
    { cat "$work/rebuild.err" >&2; die "snapshot_rebuild failed"; }
fi

python3 - "$work/latency.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
p, s, q, b = r["put_round_trip"], r["ack_to_served"], r["served_request_round_trip"], r["baseline_request_round_trip"]
print(f"""
portcullis Admin API write latency, {r['writes']} writes, $routes routes in the store
  machine: $cpus CPUs ($( [ ${#pin_gw[@]} -gt 0 ] && echo "portcullis on CPU 0, client and upstream on CPU 1" || echo "not pinned")), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo); load average before: $load_before, after: $load_after
  binary: $BIN
  import of $routes routes: ${import_ms} ms; serve start-up to listening: ${startup_ms} ms; peak RSS after the writes: $((rss_kib / 1024)) MiB

  PUT round trip (sent -> 2xx read)     median {p['median_ms']:.2f} ms   p99 {p['p99_ms']:.2f} ms   max {p['max_ms']:.2f} ms
  2xx -> first response served          median {s['median_ms']:.2f} ms   p99 {s['p99_ms']:.2f} ms   max {s['max_ms']:.2f} ms   (target p99 <= 100 ms)
    served on the first poll: {r['served_on_first_poll']}/{r['writes']} (max polls {r['max_polls']}); that one request's round trip median {q['median_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms
    (a request to an old route, same connection, before each PUT: median {b['median_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms)
  snapshot_rebuild: $rebuild_line
""")
PY
