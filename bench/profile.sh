#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a scenario of
# bench/compare.sh and its portcullis baseline, one after the other, each
# answering the same number of keep-alive requests from one curl. See
# docs/benchmarks.md ("Instructions per request").
#
#   bench/profile.sh [--scenario S] [--requests N] [--top K] [--no-build]
#                    [--bin PATH] [--floor | --floor-bin PATH] [--keep]
#
# Counts are of user-space instructions in every portcullis thread (workers,
# audit and log writers), not seconds: the same build and inputs give the
# same count whatever else the machine does, so this tells a 3% change apart
# where wall-clock benchmarks on a shared machine cannot. The kernel's share
# (loopback TCP, about 60% of a proxied request's CPU) is not counted, so the
# ratios here overstate a plugin's share of a real request's CPU. Builds the
# `profiling` profile (thin LTO, line tables) unless --bin is given.
#
# --floor also counts nginx and bench/floor (the gateway's crates with none
# of the gateway; docs/benchmarks.md, "The floor") on the same requests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
BENCH_NAME=profile.sh
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

scenario=bare requests=2000 top=25 build=1 bin= floor=0 floor_bin=
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) scenario=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin) bin=$2; build=0; shift 2 ;;
    --floor) floor=1; shift ;;
    --floor-bin) floor=1; floor_bin=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "$BENCH_NAME: unknown argument $1" >&2; usage 2 ;;
  esac
done
baseline=$(python3 "$BENCH/gen.py" baseline - --work . --port 0 --scenario "$scenario" 2>/dev/null) ||
  die "unknown scenario $scenario (see bench/compare.sh --help)"

install_missing nginx:nginx-light valgrind:valgrind curl:curl redis-server:redis-server
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

BIN=${bin:-$(target_dir "$ROOT")/profiling/portcullis}
if [ "$build" -eq 1 ]; then
  say "cargo build --profile profiling -p portcullis"
  (cd "$ROOT" && cargo build --profile profiling -p portcullis)
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"
if [ "$floor" -eq 1 ] && [ -z "$floor_bin" ]; then
  floor_bin=$(build_floor "$ROOT" profiling)
fi
[ "$floor" -eq 0 ] || [ -x "$floor_bin" ] || die "$floor_bin not found"

make_work_dir
read -r up_port redis_port <<<"$(free_ports 2)"
path=/bench/item
scenario_client_args "$scenario"

python3 "$BENCH/gen.py" upstream "$work/upstream.conf" --work "$work" --port "$up_port"
start_pinned 1 upstream -- "$NGINX" -p "$work" -c "$work/upstream.conf" -e "$work/upstream.error.log"
wait_port "$up_port" "$started_pid" upstream
if [ "$scenario" = limit-count-redis ]; then
  start_pinned 1 redis -- redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no
  wait_port "$redis_port" "$started_pid" redis
fi

# curl_many N PORT — N requests on one keep-alive connection; prints how
# many were answered 200.
curl_many() {
  local n=$1 port=$2 urls=()
  for ((i = 0; i < n; i++)); do urls+=("http://127.0.0.1:$port$path"); done
  curl -s -o /dev/null -w '%{http_code}\n' "${curl_args[@]}" "${urls[@]}" | grep -c '^200$' || true
}

declare -A per_request
# count NAME PORT -- CMD... — instructions per request of CMD (a proxy
# listening on PORT) under callgrind, into per_request[NAME].
count() {
  local name=$1 port=$2 pid ok total
  shift 3
  start_pinned 0 "$name" -- valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/callgrind.$name" "$@"
  pid=$started_pid
  wait_port "$port" "$pid" "$name"
  callgrind_control -i on "$pid" >/dev/null
  ok=$(curl_many 200 "$port")
  [ "$ok" = 200 ] || die "$name answered $ok of 200 warm-up requests with 200; see $work/$name.out (--keep)"
  sleep 0.5
  callgrind_control -z "$pid" >/dev/null
  ok=$(curl_many "$requests" "$port")
  [ "$ok" = "$requests" ] || die "$name answered $ok of $requests requests with 200"
  # Give the batching writers (audit, logs) their gathering time, so the
  # records of these requests are written inside the measured window.
  sleep 0.5
  callgrind_control -d "$pid" >/dev/null
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  total=0
  for f in "$work/callgrind.$name".*; do
    [ -f "$f" ] || continue
    total=$((total + $(awk '/^summary:/ {print $2}' "$f")))
  done
  per_request[$name]=$((total / requests))
  say "$name: $((total / requests)) instructions per request"
}

# measure NAME SCENARIO — instructions per request of portcullis on SCENARIO.
measure() {
  local name=$1 s=$2 port admin metrics
  read -r port admin metrics <<<"$(free_ports 3)"
  python3 "$BENCH/gen.py" portcullis "$work/$name.yaml" --work "$work" --port "$port" \
    --upstream "$up_port" --admin "$admin" --metrics "$metrics" --redis "$redis_port" --scenario "$s"
  say "$name: portcullis under callgrind on :$port (scenario $s)"
  count "$name" "$port" -- "$BIN" serve --config "$work/$name.yaml"
}

measure "$scenario" "$scenario"
if [ -n "$baseline" ]; then measure "$baseline" "$baseline"; fi
if [ "$floor" -eq 1 ]; then
  # The same requests through nginx (one process: no master to follow) and
  # through bench/floor, the gateway's crates with none of the gateway.
  read -r ng_port f_port <<<"$(free_ports 2)"
  python3 "$BENCH/gen.py" nginx "$work/nginx.conf" --work "$work" --port "$ng_port" --upstream "$up_port" --scenario bare
  printf 'master_process off;\n' >>"$work/nginx.conf"
  say "nginx under callgrind on :$ng_port"
  count nginx "$ng_port" -- "$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/nginx.error.log"
  say "floor under callgrind on :$f_port"
  count floor "$f_port" -- "$floor_bin" --listen "127.0.0.1:$f_port" --upstream "127.0.0.1:$up_port"
fi

echo
echo "scenario $scenario, $requests requests on one keep-alive connection"
printf '%-20s %14s\n' portcullis instr/request
printf '%-20s %14s\n' "$scenario" "${per_request[$scenario]}"
if [ "$floor" -eq 1 ]; then
  printf '%-20s %14s\n' "floor" "${per_request[floor]}" "nginx" "${per_request[nginx]}"
  python3 -c 'import sys; s, p, f, n = sys.argv[1:]; p, f, n = int(p), int(f), int(n); print(f"ratio {s}/floor: {p / f:.3f}x, floor/nginx: {f / n:.3f}x, {s}/nginx: {p / n:.3f}x")' \
    "$scenario" "${per_request[$scenario]}" "${per_request[floor]}" "${per_request[nginx]}"
fi
if [ -n "$baseline" ]; then
  printf '%-20s %14s\n' "$baseline" "${per_request[$baseline]}"
  python3 -c 'import sys; s, b, x, y = sys.argv[1:]; x, y = int(x), int(y); print(f"ratio {s}/{b}: {x / y:.3f}x ({x - y:+d} instructions per request)")' \
    "$scenario" "$baseline" "${per_request[$scenario]}" "${per_request[$baseline]}"
fi
echo
echo "top $top functions of $scenario, inclusive, over $requests requests:"
dump=$(ls "$work/callgrind.$scenario".* | head -n1)
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n "1,$((top + 25))p" | grep -v '^--' | tail -n +20 | head -n "$top"
