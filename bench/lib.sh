# Shared pieces of the benchmark scripts, sourced (not run):
#
#   BENCH_NAME=tls_handshakes.sh; . "$ROOT/bench/lib.sh"
#
# Messages (say, die), missing Debian packages, free loopback ports, starting
# pinned processes that are stopped on exit, waiting for a port, and reading
# a process's CPU time and peak memory from /proc. No python.
#
# Globals it uses: BENCH_NAME (for messages), work (a temporary directory,
# removed on exit unless keep=1), pids (every process started, stopped on
# exit).

say() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${BENCH_NAME:-bench}" "$*" >&2; exit 1; }

# install_missing BIN:PACKAGE ... — apt-get install the packages whose
# binary is not on PATH (nor in /usr/sbin).
install_missing() {
  local pair bin pkg need=()
  for pair in "$@"; do
    bin=${pair%%:*} pkg=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  say "installing ${need[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
}

# build_floor ROOT PROFILE — build bench/floor (its own Cargo project, in
# the workspace's target directory under floor/) and print its path.
build_floor() {
  local dir
  dir="$(target_dir "$1")/floor"
  say "cargo build --profile $2 --manifest-path bench/floor/Cargo.toml"
  (cd "$1" && cargo build --profile "$2" --manifest-path bench/floor/Cargo.toml --target-dir "$dir") >&2
  echo "$dir/$2/floor"
}

# The cargo target directory of the workspace at $1.
target_dir() {
  local dir
  dir=$(cd "$1" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  echo "${dir:-$1/target}"
}

pids=()
keep=${keep:-0}
work=
make_work_dir() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
  trap stop_all EXIT
  trap 'exit 130' INT TERM
}
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$work" ]; then
    if [ "$keep" -eq 1 ]; then say "kept $work"; else rm -rf "$work"; fi
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_ports N — N distinct loopback ports nobody listens on (random, below
# the ephemeral range so outgoing connections do not take them meanwhile).
free_ports() {
  local n=$1 out=() p
  while [ ${#out[@]} -lt "$n" ]; do
    p=$((20000 + RANDOM % 12000))
    case " ${out[*]} " in *" $p "*) continue ;; esac
    port_open "$p" || out+=("$p")
  done
  echo "${out[*]}"
}

# start_pinned CPU NAME -- COMMAND... — start COMMAND on CPU with its output
# in $work/NAME.out; its pid is in $started_pid and stopped on exit.
started_pid=
start_pinned() {
  local cpu=$1 name=$2
  shift 3
  taskset -c "$cpu" "$@" >"$work/$name.out" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
}

# wait_port PORT PID NAME — until PORT accepts connections; die if PID exits.
wait_port() {
  local i
  for i in $(seq 1 600); do
    port_open "$1" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$work/$3.out" >&2 || true; die "$3 exited during start-up"; }
    sleep 0.1
  done
  die "$3 did not listen on :$1 within 60 s"
}

# cpu_ticks PID... — utime+stime of the processes, in clock ticks.
cpu_ticks() {
  local total=0 p f
  for p in "$@"; do
    f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    # shellcheck disable=SC2086
    set -- $f
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
# A process and its direct children (nginx: master and worker).
tree() { echo "$1" $(pgrep -P "$1" || true); }
# Peak resident set (KiB).
vmhwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# scenario_client_args SCENARIO — what the measured request carries besides
# GET /bench/item (bench/gen.py writes it into $work): `client_args` for wrk
# (headers -H ..., or a POST script -s ...) and `curl_args` for curl.
# Needs BENCH.
scenario_client_args() {
  local i
  eval "client_args=($(python3 "$BENCH/gen.py" client - --work "$work" --port 0 --scenario "$1"))"
  curl_args=()
  if [ -f "$work/post.json" ]; then
    curl_args=(-X POST -H 'Content-Type: application/json' --data-binary "@$work/post.json")
  else
    for ((i = 0; i < ${#client_args[@]}; i += 2)); do curl_args+=("${client_args[i]}" "${client_args[i + 1]}"); done
  fi
}
