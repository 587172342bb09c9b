#!/usr/bin/env bash
# portcullis's test command: installs what the tests need, builds the
# workspace, runs every test, then walks through the customer-API scenario
# against the real binary.
#
#   scripts/test.sh                 # from any directory
#
# Environment:
#   PORTCULLIS_ADMIN_KEY        admin key for the scenario's gateway (default: random)
#   PORTCULLIS_SKIP_SCENARIO=1  do not run the scenario step
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

# --- 1. system packages -----------------------------------------------------
# binary -> Debian package. Installed only when the binary is absent.
need_packages=()
for pair in redis-server:redis-server etcd:etcd-server nginx:nginx-light curl:curl protoc:protobuf-compiler; do
  bin=${pair%%:*} pkg=${pair#*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    need_packages+=("$pkg")
  fi
done
# etcd-client's build script (crates/etcd) runs protoc on etcd's protos,
# which import the well-known types that libprotobuf-dev ships.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_packages+=(libprotobuf-dev)
if [ ${#need_packages[@]} -gt 0 ]; then
  say "installing ${need_packages[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install ${need_packages[*]}"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends "${need_packages[@]}"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required"

# --- 1b. the APISIX Python SDK, for crates/portcullis/tests/gateway/admin_sdk.rs -------
# A venv under the target directory from tests/sdk/requirements.txt; that
# test fails (it does not skip) without it. Rebuilt when the pins change.
sdk_target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")
SDK_VENV="$sdk_target_dir/sdk-venv"
SDK_REQ="$ROOT/tests/sdk/requirements.txt"
if ! cmp -s "$SDK_REQ" "$SDK_VENV/requirements.txt" ||
   ! "$SDK_VENV/bin/python" -c 'import apisix_client' >/dev/null 2>&1; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv"
    sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends python3-venv
  fi
  say "creating $SDK_VENV (apisix-client from PyPI)"
  rm -rf "$SDK_VENV"
  python3 -m venv "$SDK_VENV" || die "python3 -m venv $SDK_VENV failed"
  "$SDK_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$SDK_REQ" ||
    die "pip install -r $SDK_REQ failed"
  cp "$SDK_REQ" "$SDK_VENV/requirements.txt"
fi

# --- 1c. the JSON-Schema-Test-Suite, for crates/portcullis/tests/gateway/json_schema_suite.rs
# The suite's npm package (@json-schema-org/tests) no longer ships the test
# files, so it comes from the sdist of Python's jsonschema on PyPI, which
# vendors the suite under json/. Pinned and checked by sha256; that test
# fails (it does not skip) without it.
SUITE_DIR="$sdk_target_dir/json-schema-test-suite"
SUITE_PIN="jsonschema==4.26.0"
SUITE_SHA256=0c26707e2efad8aa1bfc5b7ce170f3fccc2e4918ff85989ba9ffa9facb2be326
if [ "$(cat "$SUITE_DIR/.pin" 2>/dev/null)" != "$SUITE_PIN $SUITE_SHA256" ]; then
  say "fetching the JSON-Schema-Test-Suite ($SUITE_PIN sdist from PyPI)"
  suite_tmp=$(mktemp -d "${TMPDIR:-/tmp}/json-schema-suite.XXXXXX")
  "$SDK_VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: -d "$suite_tmp" "$SUITE_PIN" || die "pip download $SUITE_PIN failed"
  sdist=$(ls "$suite_tmp"/jsonschema-*.tar.gz)
  echo "$SUITE_SHA256  $sdist" | sha256sum -c --quiet - || die "$sdist: sha256 mismatch"
  rm -rf "$SUITE_DIR" && mkdir -p "$SUITE_DIR"
  tar -xzf "$sdist" -C "$SUITE_DIR" --strip-components=2 "$(basename "$sdist" .tar.gz)/json"
  [ -d "$SUITE_DIR/tests/draft2020-12" ] || die "$sdist holds no json/tests/draft2020-12"
  echo "$SUITE_PIN $SUITE_SHA256" >"$SUITE_DIR/.pin"
  rm -rf "$suite_tmp"
fi
export PORTCULLIS_JSON_SCHEMA_SUITE="$SUITE_DIR"

# --- 2. test runner -----------------------------------------------------------
have_nextest=0
if cargo nextest --version >/dev/null 2>&1; then
  have_nextest=1
else
  say "installing cargo-nextest"
  if cargo install cargo-nextest --locked; then
    have_nextest=1
  else
    echo "test.sh: cargo-nextest could not be installed; falling back to cargo test" >&2
  fi
fi

# --- 3. build and test ------------------------------------------------------
say "cargo build --workspace --bins"
cargo build --workspace --bins

if [ "$have_nextest" -eq 1 ]; then
  say "cargo nextest run --workspace"
  cargo nextest run --workspace
else
  say "cargo test --workspace"
  cargo test --workspace
fi

# --- 4. the customer-API walk-through -------------------------------------
if [ "${PORTCULLIS_SKIP_SCENARIO:-0}" = 1 ]; then
  say "scenario skipped (PORTCULLIS_SKIP_SCENARIO=1)"
  exit 0
fi

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")
BIN="$target_dir/debug/portcullis"
SCENARIO="$ROOT/tests/scenarios/customer-api.sh"
[ -x "$BIN" ] || die "$BIN was not built"
[ -f "$SCENARIO" ] || die "$SCENARIO is missing"

# N distinct free loopback ports, all held open while choosing.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

read -r data_port admin_port metrics_port upstream_port <<<"$(free_ports 4)"
work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-scenario.XXXXXX")
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -TERM "$gw_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export PORTCULLIS_ADMIN_KEY=${PORTCULLIS_ADMIN_KEY:-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
mkdir -p "$work/data"
cat >"$work/portcullis.yaml" <<EOF
gateway:
  listen: ["127.0.0.1:$data_port"]
  admin:
    listen: "127.0.0.1:$admin_port"
    keys:
      - { name: ci, key: "\${PORTCULLIS_ADMIN_KEY}", role: admin }
  metrics:
    listen: "127.0.0.1:$metrics_port"
  config_source: store
  data_dir: "$work/data"
  access_log: "off"
  log_level: warn
EOF

say "customer-API scenario: starting $BIN (data :$data_port, admin :$admin_port)"
"$BIN" serve --config "$work/portcullis.yaml" >"$work/gateway.log" 2>&1 &
gw_pid=$!

# The data plane must come up; the Admin API may not exist yet in this build.
for _ in $(seq 1 200); do
  port_open "$data_port" && break
  kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gateway.log" >&2; die "portcullis exited during start-up"; }
  sleep 0.1
done
port_open "$data_port" || { cat "$work/gateway.log" >&2; die "portcullis did not listen on :$data_port within 20 s"; }
admin_up=0
for _ in $(seq 1 50); do
  if port_open "$admin_port"; then admin_up=1; break; fi
  kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gateway.log" >&2; die "portcullis exited during start-up"; }
  sleep 0.1
done
if [ "$admin_up" -eq 0 ]; then
  cat "$work/gateway.log" >&2
  die "the Admin API did not come up on :$admin_port within 5 s"
fi

set +e
ADMIN="http://127.0.0.1:$admin_port" DATA="http://127.0.0.1:$data_port" \
  ADMIN_KEY="$PORTCULLIS_ADMIN_KEY" UPSTREAM_PORT="$upstream_port" \
  bash "$SCENARIO"
scenario_rc=$?
set -e

if ! kill -0 "$gw_pid" 2>/dev/null; then
  cat "$work/gateway.log" >&2
  die "portcullis died during the scenario"
fi
if [ "$scenario_rc" -ne 0 ]; then
  echo "--- gateway log ---" >&2
  tail -n 50 "$work/gateway.log" >&2
  die "customer-API scenario failed"
fi
say "customer-API scenario passed"
