#!/usr/bin/env bash
# TLS and mTLS handshakes per second and CPU per handshake: nginx and
# portcullis, each with client certificates (nginx: ssl_verify_client;
# portcullis: ssls client.ca + mtls-auth) and without them, in one
# interleaved run, on loopback. See docs/benchmarks.md ("TLS and mTLS
# handshakes").
#
#   bench/tls_handshakes.sh [--rounds N] [--duration S] [--connections C]
#                           [--no-build] [--bin PATH] [--client PATH] [--keep]
#
# Every connection is a full TLS 1.3 handshake (X25519, AES-128-GCM, ECDSA
# P-256 certificates on both sides, no resumption) and one GET proxied to an
# upstream nginx. Proxies on CPU 0; the load client and the upstream on CPU 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=tls_handshakes.sh
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

rounds=3 duration=10 connections=50 build=1 keep=0 bin= client=
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin) bin=$2; shift 2 ;;
    --client) client=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "$BENCH_NAME: unknown argument $1" >&2; usage 2 ;;
  esac
done

install_missing nginx:nginx-light openssl:openssl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (proxies on CPU 0, client and upstream on CPU 1)"

# --- binaries -------------------------------------------------------------------
target=$(target_dir "$ROOT")
BIN=${bin:-$target/release/portcullis}
CLIENT=${client:-$target/release/examples/handshake_load}
if [ "$build" -eq 1 ]; then
  if [ -z "$bin" ]; then
    say "cargo build --release -p portcullis (fat LTO: several minutes on 2 cores)"
    (cd "$ROOT" && cargo build --release -p portcullis)
  fi
  if [ -z "$client" ]; then
    say "cargo build --release -p portcullis-test-support --example handshake_load"
    (cd "$ROOT" && cargo build --release -p portcullis-test-support --example handshake_load)
  fi
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or pass --bin)"
[ -x "$CLIENT" ] || die "$CLIENT not found (build it, or pass --client)"

make_work_dir

# --- certificates: one CA, ECDSA P-256 everywhere ---------------------------------
cd "$work"
SNI=bench.local
CLIENT_CN=bench-client
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec ca.key
openssl req -x509 -new -key ca.key -sha256 -days 7 -subj "/CN=portcullis bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.pem 2>/dev/null
leaf() { # leaf NAME SUBJECT EXTENSIONS
  ec "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
leaf server "/CN=$SNI" "subjectAltName=DNS:$SNI
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
leaf client "/O=Bench/CN=$CLIENT_CN" "subjectAltName=URI:spiffe://$SNI/client
extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
cd - >/dev/null
indent() { sed 's/^/      /' "$1"; }

# --- configs ------------------------------------------------------------------------
read -r up_port ng_port ngt_port m_http m_tls m_admin m_metrics t_http t_tls t_admin t_metrics <<<"$(free_ports 11)"
body=$(printf 'portcullis bench %.0s' $(seq 1 64) | cut -c1-1023)
user_line=""; [ "$(id -u)" -eq 0 ] && user_line="user root;"
nginx_head() { # nginx_head NAME
  mkdir -p "$work/nginx-tmp/$1"
  cat <<EOF
$user_line
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_temp() {
  local d
  for d in client_body proxy fastcgi uwsgi scgi; do echo "  ${d}_temp_path $work/nginx-tmp/$1/$d;"; done
}

{ nginx_head upstream; cat <<EOF
http {
  access_log off;
$(nginx_temp upstream)
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$up_port backlog=4096;
    location / { default_type text/plain; return 200 "$body\n"; }
  }
}
EOF
} >"$work/upstream.conf"

# nginx with client certificates: mtls-auth's counterpart maps the verified
# certificate's subject to a consumer name sent upstream and refuses an
# unknown subject. Without them (nginx-tls): the same server, no client CA.
nginx_conf() { # nginx_conf NAME PORT MTLS(0|1)
  local verify="" guard="" consumer=""
  if [ "$3" -eq 1 ]; then
    verify="ssl_client_certificate $work/ca.pem;
    ssl_verify_client on;
    ssl_verify_depth 1;"
    guard='if ($consumer = "") { return 401; }'
    consumer='proxy_set_header X-Consumer-Username $consumer;'
  fi
  nginx_head "$1"
  cat <<EOF
http {
  access_log off;
$(nginx_temp "$1")
  map \$ssl_client_s_dn \$consumer {
    default "";
    "CN=$CLIENT_CN,O=Bench" bench;
  }
  upstream up {
    server 127.0.0.1:$up_port;
    keepalive 64;
    keepalive_requests 1000;
  }
  server {
    listen 127.0.0.1:$2 ssl backlog=4096;
    server_name $SNI;
    ssl_certificate $work/server.pem;
    ssl_certificate_key $work/server.key;
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    $verify
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$host;
    proxy_set_header X-Forwarded-Port \$server_port;
    $consumer
    location / {
      $guard
      proxy_pass http://up;
    }
  }
}
EOF
}
nginx_conf nginx-mtls "$ng_port" 1 >"$work/nginx-mtls.conf"
nginx_conf nginx-tls "$ngt_port" 0 >"$work/nginx-tls.conf"

portcullis_conf() { # portcullis_conf HTTP TLS ADMIN METRICS MTLS(0|1)
  cat <<EOF
gateway:
  listen: ["127.0.0.1:$1"]
  listen_tls: ["127.0.0.1:$2"]
  admin: { listen: "127.0.0.1:$3" }
  metrics: { listen: "127.0.0.1:$4" }
  config_source: file
  data_dir: "$work/data-$2"
  workers: 1
  access_log: "off"
  audit: { enabled: false }
  log_level: error
upstreams:
  - id: up
    type: roundrobin
    nodes: { "127.0.0.1:$up_port": 1 }
EOF
  if [ "$5" -eq 1 ]; then
    cat <<EOF
routes:
  - { id: bench, uri: "/*", upstream_id: up, plugins: { mtls-auth: {} } }
consumers:
  - username: bench
  - id: bench/credentials/cert
    plugins:
      mtls-auth: { subject: "O=Bench, CN=$CLIENT_CN" }
EOF
  else
    echo 'routes:'
    echo '  - { id: bench, uri: "/*", upstream_id: up }'
  fi
  cat <<EOF
ssls:
  - id: bench
    snis: [$SNI]
    ssl_protocols: [TLSv1.3]
    cert: |
$(indent "$work/server.pem")
    key: |
$(indent "$work/server.key")
EOF
  if [ "$5" -eq 1 ]; then
    echo '    client:'
    echo '      depth: 1'
    echo '      ca: |'
    sed 's/^/        /' "$work/ca.pem"
  fi
}
portcullis_conf "$m_http" "$m_tls" "$m_admin" "$m_metrics" 1 >"$work/portcullis-mtls.yaml"
portcullis_conf "$t_http" "$t_tls" "$t_admin" "$t_metrics" 0 >"$work/portcullis-tls.yaml"

# --- start ----------------------------------------------------------------------------
say "upstream nginx on :$up_port (CPU 1)"
start_pinned 1 upstream -- "$NGINX" -p "$work" -c "$work/upstream.conf" -e "$work/upstream.error.log"
wait_port "$up_port" "$started_pid" upstream

targets=(nginx-mtls portcullis-mtls nginx-tls portcullis-tls)
declare -A port_of pid_of cert_of
for t in nginx-mtls nginx-tls; do
  port=$ng_port; [ "$t" = nginx-tls ] && port=$ngt_port
  say "$t on :$port (CPU 0)"
  start_pinned 0 "$t" -- "$NGINX" -p "$work" -c "$work/$t.conf" -e "$work/$t.error.log"
  pid_of[$t]=$started_pid port_of[$t]=$port
  wait_port "$port" "$started_pid" "$t"
done
for t in portcullis-mtls portcullis-tls; do
  port=$m_tls; [ "$t" = portcullis-tls ] && port=$t_tls
  say "$t on :$port (CPU 0)"
  start_pinned 0 "$t" -- "$BIN" serve --config "$work/$t.yaml"
  pid_of[$t]=$started_pid port_of[$t]=$port
  wait_port "$port" "$started_pid" "$t"
done
cert_of[nginx-mtls]=1 cert_of[portcullis-mtls]=1 cert_of[nginx-tls]=0 cert_of[portcullis-tls]=0

run_client() { # run_client TARGET SECONDS OUTFILE
  local args=(--addr "127.0.0.1:${port_of[$1]}" --server-name "$SNI" --ca "$work/ca.pem"
    --connections "$connections" --duration "$2" --path /bench/item)
  [ "${cert_of[$1]}" -eq 1 ] && args+=(--cert "$work/client.pem" --key "$work/client.key")
  taskset -c 1 "$CLIENT" "${args[@]}" >"$3" 2>"$3.err"
}
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" "$2"; }

# Each target must serve the request (200, no errors) before anything counts;
# the mTLS targets must serve nothing to a client without a certificate.
for t in "${targets[@]}"; do
  run_client "$t" 1 "$work/check-$t.txt" || die "$t: client failed: $(cat "$work/check-$t.txt.err")"
  [ "$(field errors "$work/check-$t.txt")" = 0 ] && [ "$(field non200 "$work/check-$t.txt")" = 0 ] &&
    [ "$(field completed "$work/check-$t.txt")" -gt 0 ] ||
    die "$t: $(cat "$work/check-$t.txt" "$work/check-$t.txt.err"); logs in $work (use --keep)"
  if [ "${cert_of[$t]}" -eq 1 ]; then
    taskset -c 1 "$CLIENT" --addr "127.0.0.1:${port_of[$t]}" --server-name "$SNI" --ca "$work/ca.pem" \
      --connections 1 --duration 0.2 --path /bench/item >"$work/nocert-$t.txt" 2>/dev/null || true
    # portcullis ends the handshake with an alert; nginx completes it and
    # answers 400. Either way nothing may be served.
    served=$(($(field completed "$work/nocert-$t.txt") - $(field non200 "$work/nocert-$t.txt")))
    [ "$served" -eq 0 ] || die "$t served a client without a certificate"
  fi
  say "$t: $(field version "$work/check-$t.txt") $(field suite "$work/check-$t.txt") $(field group "$work/check-$t.txt")"
done

load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
  say "warning: load average $load1 before the run; other work on this machine skews the figures"
fi

say "warm-up: 2 s each"
for t in "${targets[@]}"; do run_client "$t" 2 "$work/warmup-$t.txt"; done

clk=$(getconf CLK_TCK)
: >"$work/rounds.tsv"
for r in $(seq 1 "$rounds"); do
  for t in "${targets[@]}"; do
    procs=$(tree "${pid_of[$t]}")
    before=$(cpu_ticks $procs)
    out="$work/round$r-$t.txt"
    run_client "$t" "$duration" "$out"
    after=$(cpu_ticks $procs)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "$(field per_second "$out")" \
      "$(field completed "$out")" "$((after - before))" "$(field seconds "$out")" \
      "$(field handshake_p99_ms "$out")" "$(($(field errors "$out") + $(field non200 "$out")))" \
      >>"$work/rounds.tsv"
    say "round $r/$rounds $t: $(field per_second "$out") connections/s, $(field errors "$out") errors"
    sleep 1
  done
done

for t in "${targets[@]}"; do
  p=${pid_of[$t]}
  case $t in nginx-*) p=$(pgrep -P "$p" | head -n1) ;; esac
  printf '%s\t%s\n' "$t" "$(vmhwm "$p")" >>"$work/memory.tsv"
done

# --- summary: medians over rounds, then ratios ----------------------------------------
echo
echo "TLS handshakes: $rounds x ${duration}s, $connections connections, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), load $load1"
awk -F'\t' -v clk="$clk" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  FNR == NR && NF == 2 { rss[$1] = $2; next }
  {
    t = $1; order[t] = order[t] ? order[t] : ++n; name[order[t]] = t
    rate[t] = rate[t] " " $3
    cpu[t] = cpu[t] " " ($4 > 0 ? $5 / clk * 1e6 / $4 : 0)
    busy[t] = busy[t] " " ($5 / clk / $6 * 100)
    p99[t] = p99[t] " " $7
    bad[t] += $8
  }
  END {
    printf "%-17s %12s %14s %7s %16s %10s %6s\n", "target", "conn/s", "CPU us/conn", "busy", "handshake p99", "peak RSS", "errors"
    for (i = 1; i <= n; i++) {
      t = name[i]
      m_rate[t] = median(rate[t]); m_cpu[t] = median(cpu[t]); m_p99[t] = median(p99[t])
      printf "%-17s %12.0f %14.1f %6.0f%% %13.2f ms %7.1f MiB %6d\n", t, m_rate[t], m_cpu[t], median(busy[t]), m_p99[t], rss[t] / 1024, bad[t]
    }
    print ""
    ratio("portcullis-mtls", "nginx-mtls")
    ratio("portcullis-tls", "nginx-tls")
    ratio("portcullis-mtls", "portcullis-tls")
    ratio("nginx-mtls", "nginx-tls")
    for (t in bad) if (bad[t] > 0) exit 3
  }
  function ratio(a, b) {
    printf "%s / %s: conn/s %.2fx, CPU per handshake %.2fx, handshake p99 %.2fx, peak RSS %.2fx\n", a, b,
      m_rate[a] / m_rate[b], m_cpu[a] / m_cpu[b], m_p99[a] / m_p99[b], rss[a] / rss[b]
  }
' "$work/memory.tsv" "$work/rounds.tsv" || die "some rounds had errors or non-200 answers (see $work with --keep)"
