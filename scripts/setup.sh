#!/usr/bin/env bash
# Installs what building, testing and running Palisade needs on Debian 12. Safe to run again.
set -euo pipefail

# Debian packages Palisade needs:
# - building the XDP program and the AF_XDP crates: clang llvm libelf-dev zlib1g-dev pkg-config libbpf-dev m4 make
# - the lab, tests and benchmarks: iproute2 (netns, veth), ethtool, nftables (baseline), iputils-ping, procps
# - the control plane's datastore: etcd-server (tests start it on loopback)
# - the control plane's gRPC code (ours and the etcd client's): protobuf-compiler, libprotobuf-dev
PACKAGES=(clang llvm libelf-dev zlib1g-dev pkg-config libbpf-dev m4 make
  iproute2 ethtool nftables iputils-ping procps etcd-server protobuf-compiler libprotobuf-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3; do
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" && break
    echo "setup: apt-get failed (attempt $attempt), retrying" >&2
    sleep 5
  done
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust toolchain) not found" >&2; exit 1; }
