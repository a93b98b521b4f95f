#!/usr/bin/env bash
# The main job on the embedded default: the zero-trust walkthrough from the guides, step by step.
# Each step adds policy to the cluster state; `palisadectl eval` prints the verdict of each flow,
# what decided it, and checks it against the expected verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked -q -p palisadectl
ctl=target/debug/palisadectl
example=examples/zero-trust-walkthrough
state=()
for step in "$example"/*/; do
  state+=("$step")
  echo
  echo "== $(basename "$step") =="
  grep -h '^kind:' "$step"*.yaml 2>/dev/null | sort | uniq -c | sed 's/^/   adds /' || true
  if [ -f "$step/flows.jsonl" ]; then
    "$ctl" eval --state "${state[@]}" --flows "$step/flows.jsonl" --output table --check
  fi
done
echo
echo "Every verdict matched the walkthrough's expectations. Try: $ctl trace $(printf -- "--state %s " "${state[@]}")10.244.1.30 10.244.1.10 TCP --dst-port 80"
