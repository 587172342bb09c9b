#!/usr/bin/env bash
# portcullis vs nginx as reverse proxies in front of the same upstream, in one
# run, interleaved, on loopback. See docs/benchmarks.md.
#
#   bench/compare.sh [--rounds N] [--duration S] [--connections C] [--threads T]
#                    [--scenario S] [--no-build] [--bin PATH] [--alt-bin PATH]
#                    [--floor | --floor-bin PATH] [--keep]
#
# Scenarios: bare, routesN (routes10, routes1000, routes10000), key-auth,
# jwt-hs256, jwt-es256, policy100, policy100-context, limit-count, limit-count-redis, telemetry,
# audit, post, validation. Each but bare, post and routes10 also runs its
# portcullis baseline (bare; post for validation; routes10 for routesN) in the
# same interleaved run and prints the plugin's cost over it.
#
# --floor also runs bench/floor, a minimal proxy of the gateway's own crates
# (hyper, tokio, mimalloc) with none of the gateway: the least a proxy built
# on them can cost (docs/benchmarks.md, "The floor").
#
# Layout (2+ CPUs): each proxy pinned to CPU 0 (one worker each), the upstream
# (nginx, fixed 1 KiB body), Redis (limit-count-redis) and wrk share CPU 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"

rounds=3 duration=10 connections=50 threads=1 scenario=bare build=1 keep=0 bin= alt_bin= floor=0 floor_bin=
usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --scenario) scenario=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin) bin=$2; build=0; shift 2 ;;
    --alt-bin) alt_bin=$2; shift 2 ;;
    --floor) floor=1; shift ;;
    --floor-bin) floor=1; floor_bin=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
baseline=$(python3 "$BENCH/gen.py" baseline - --work . --port 0 --scenario "$scenario" 2>/dev/null) || {
  echo "compare.sh: unknown scenario $scenario (see --help)" >&2; exit 2
}

BENCH_NAME=compare.sh
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

tools=(nginx:nginx-light wrk:wrk taskset:util-linux openssl:openssl)
[ "$scenario" != limit-count-redis ] || tools+=(redis-server:redis-server)
install_missing "${tools[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null 2>&1 || die "python3 is required"
cpus=$(nproc)
[ "$cpus" -ge 2 ] || die "needs at least 2 CPUs (proxies on CPU 0, upstream and wrk on CPU 1)"

# --- portcullis -----------------------------------------------------------------
target_dir=$(target_dir "$ROOT")
BIN=${bin:-$target_dir/release/portcullis}
if [ "$build" -eq 1 ]; then
  say "cargo build --release -p portcullis (fat LTO: a few minutes on 2 cores)"
  (cd "$ROOT" && cargo build --release -p portcullis)
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"
if [ "$floor" -eq 1 ] && [ -z "$floor_bin" ]; then
  floor_bin=$(build_floor "$ROOT" release)
fi
[ "$floor" -eq 0 ] || [ -x "$floor_bin" ] || die "$floor_bin not found"

# --- processes and clean-up (lib.sh: stopped on exit, $work removed unless --keep)
make_work_dir

# --- start everything ----------------------------------------------------------
read -r up_port ng_port pc_port pc_admin pc_metrics b_port b_admin b_metrics a_port a_admin a_metrics redis_port f_port <<<"$(free_ports 13)"
path=/bench/item
# What wrk sends besides GET $path: headers (-H ...) or a POST script (-s ...).
scenario_client_args "$scenario"

if [ "$scenario" = limit-count-redis ]; then
  say "redis on :$redis_port (CPU 1)"
  start_pinned 1 "redis" -- redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no
  redis_pid=$started_pid
  wait_port "$redis_port" "$redis_pid" "redis"
fi

gen_portcullis() { # gen_portcullis OUT PORT ADMIN METRICS SCENARIO
  python3 "$BENCH/gen.py" portcullis "$1" --work "$work" --port "$2" --upstream "$up_port" \
    --admin "$3" --metrics "$4" --redis "$redis_port" --scenario "$5"
}
python3 "$BENCH/gen.py" upstream "$work/upstream.conf" --work "$work" --port "$up_port"
python3 "$BENCH/gen.py" nginx "$work/nginx.conf" --work "$work" --port "$ng_port" --upstream "$up_port" --scenario "$scenario"
gen_portcullis "$work/portcullis.yaml" "$pc_port" "$pc_admin" "$pc_metrics" "$scenario"

say "upstream nginx on :$up_port (CPU 1)"
start_pinned 1 "upstream" -- "$NGINX" -p "$work" -c "$work/upstream.conf" -e "$work/upstream.error.log"
up_pid=$started_pid
wait_port "$up_port" "$up_pid" "upstream"

say "nginx proxy on :$ng_port (CPU 0)"
start_pinned 0 "nginx" -- "$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/nginx.error.log"
ng_pid=$started_pid
wait_port "$ng_port" "$ng_pid" "nginx"

say "portcullis on :$pc_port (CPU 0, scenario $scenario)"
start_pinned 0 "portcullis" -- "$BIN" serve --config "$work/portcullis.yaml"
pc_pid=$started_pid
wait_port "$pc_port" "$pc_pid" "portcullis"

targets=(nginx portcullis)
declare -A port_of=([nginx]=$ng_port [portcullis]=$pc_port)
declare -A pid_of=([nginx]=$ng_pid [portcullis]=$pc_pid)
if [ -n "$baseline" ]; then
  b=portcullis-$baseline
  gen_portcullis "$work/$b.yaml" "$b_port" "$b_admin" "$b_metrics" "$baseline"
  say "$b (baseline) on :$b_port (CPU 0)"
  start_pinned 0 "$b" -- "$BIN" serve --config "$work/$b.yaml"
  b_pid=$started_pid
  wait_port "$b_port" "$b_pid" "$b"
  targets+=("$b")
  port_of[$b]=$b_port
  pid_of[$b]=$b_pid
fi

if [ -n "$alt_bin" ]; then
  # A second portcullis build (e.g. a branch) on the same config, interleaved.
  [ -x "$alt_bin" ] || die "--alt-bin $alt_bin is not an executable"
  gen_portcullis "$work/portcullis-alt.yaml" "$a_port" "$a_admin" "$a_metrics" "$scenario"
  say "portcullis-alt ($alt_bin) on :$a_port (CPU 0)"
  start_pinned 0 "portcullis-alt" -- "$alt_bin" serve --config "$work/portcullis-alt.yaml"
  a_pid=$started_pid
  wait_port "$a_port" "$a_pid" "portcullis-alt"
  targets+=(portcullis-alt)
  port_of[portcullis-alt]=$a_port
  pid_of[portcullis-alt]=$a_pid
fi

if [ "$floor" -eq 1 ]; then
  say "floor ($floor_bin) on :$f_port (CPU 0)"
  start_pinned 0 "floor" -- "$floor_bin" --listen "127.0.0.1:$f_port" --upstream "127.0.0.1:$up_port"
  f_pid=$started_pid
  wait_port "$f_port" "$f_pid" "floor"
  targets+=(floor)
  port_of[floor]=$f_port
  pid_of[floor]=$f_pid
fi

# Every proxy must answer the measured request with 200 before we measure.
for t in "${targets[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "${curl_args[@]}" "http://127.0.0.1:${port_of[$t]}$path" || true)
  [ "$code" = 200 ] || die "$t answered $code to $path (want 200); logs in $work (use --keep)"
done

cat >"$work/meta.env" <<EOF
scenario=$scenario
baseline=$baseline
rounds=$rounds
duration=$duration
threads=$threads
connections=$connections
clk_tck=$(getconf CLK_TCK)
cpus=$cpus
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
EOF
load1=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float('$load1') > 0.5 else 1)"; then
  say "warning: load average $load1 before the run; other work on this machine skews the figures"
fi

run_wrk() { # run_wrk TARGET SECONDS OUTFILE
  taskset -c 1 wrk -t"$threads" -c"$connections" -d"${2}s" --latency "${client_args[@]}" \
    "http://127.0.0.1:${port_of[$1]}$path" >"$3" 2>&1
}

say "warm-up: 2 s each"
for t in "${targets[@]}"; do run_wrk "$t" 2 "$work/warmup-$t.txt"; done

: >"$work/rounds.tsv"
for r in $(seq 1 "$rounds"); do
  for t in "${targets[@]}"; do
    procs=$(tree "${pid_of[$t]}")
    before=$(cpu_ticks $procs)
    run_wrk "$t" "$duration" "$work/round$r-$t.txt"
    after=$(cpu_ticks $procs)
    printf '%s\t%s\t%s\t%s\n' "$t" "$r" "$work/round$r-$t.txt" "$((after - before))" >>"$work/rounds.tsv"
    say "round $r/$rounds $t: $(awk '/Requests\/sec/ {print $2}' "$work/round$r-$t.txt") req/s"
    sleep 1
  done
done

# Peak memory: the nginx worker (the master is idle), the portcullis process.
: >"$work/memory.tsv"
for t in "${targets[@]}"; do
  p=${pid_of[$t]}
  if [ "$t" = nginx ]; then p=$(pgrep -P "$p" | head -n1); fi
  printf '%s\t%s\n' "$t" "$(vmhwm "$p")" >>"$work/memory.tsv"
done

python3 "$BENCH/summarize.py" "$work"
