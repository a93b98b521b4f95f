#!/usr/bin/env bash
# Installs what building, testing and running Palisade needs on Debian 12. Safe to run again.
set -euo pipefail

# Debian packages Palisade needs (none yet beyond the Rust toolchain; the packet path adds
# clang, libbpf-dev, libelf-dev, iproute2 and nftables here).
PACKAGES=()

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
