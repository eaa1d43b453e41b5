#!/usr/bin/env bash
# Builds what the xDS load comparison needs (`sextant-bench run --compare-rcp`),
# for the bench path only (never `make test`):
#   protoc       from Debian's protobuf-compiler, and libprotobuf-dev for
#                its well-known types (google/protobuf/*.proto): the
#                rust-control-plane crate compiles Envoy's protos at build time
#   rcp-server   control-plane/bench/rcp-server, a separate Cargo workspace
#                (its older tonic/prost stay out of the product's lockfile),
#                built in release into its own target dir.
# Prints the path of the rcp-server binary on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
  packages=(protobuf-compiler libprotobuf-dev)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-bench-tools: installing ${packages[*]} from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }
  else
    echo "install-bench-tools: protoc or its well-known types are missing; install Debian's ${packages[*]}" >&2
    exit 1
  fi
fi

target="${RCP_TARGET_DIR:-$root/target/rcp}"
echo "install-bench-tools: building rcp-server into $target" >&2
CARGO_TARGET_DIR="$target" cargo build --release --locked \
  --manifest-path "$root/control-plane/bench/rcp-server/Cargo.toml" >&2
echo "$target/release/rcp-server"
