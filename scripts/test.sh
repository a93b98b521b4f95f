#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --locked
