#!/usr/bin/env bash
# The README's first command: build portcullis and run `portcullis demo`, an
# example config in front of a built-in upstream (no other service needed).
# The build needs protoc and Google's well-known .proto files (the etcd client
# is generated from them); they are installed from Debian if missing.
#   scripts/demo.sh [--port 9080]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
exec cargo run -p portcullis -- demo "$@"
