#!/usr/bin/env bash
# The main job on the embedded default: the zero-trust walkthrough from the guides, on real traffic.
# A lab is built from the walkthrough's pods (a network namespace per pod, veths to a node namespace,
# an external host beyond the uplink), palisade-dataplane enforces the policy with XDP and AF_XDP,
# and after each step (default deny, client -> frontend, frontend -> backend, DNS egress, external
# ingress, a Calico GlobalNetworkPolicy) every pod connects to every other: `.` connected, `X` blocked.
# Then the same steps are checked flow by flow against the reference evaluator, and a bare-metal host
# is protected with HostEndpoints (palisadectl host-probe). Everything is torn down after. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked -q -p palisadectl -p palisade-dataplane
ctl=target/debug/palisadectl
example=examples/zero-trust-walkthrough
steps=("$example"/*/)
args=(--state "${steps[0]}")
for step in "${steps[@]:1}"; do args+=(--step "$step"); done
"$ctl" probe "${args[@]}" --timeout-ms 500

echo "== the same steps, flow by flow, against the expected verdicts =="
state=()
for step in "${steps[@]}"; do
  state+=("$step")
  "$ctl" eval --state "${state[@]}" --flows "$step/flows.jsonl" --check >/dev/null
  echo "$(basename "$step"): every flow as expected"
done
echo
echo "== a bare-metal host: HostEndpoints, restrict-host-ssh, web in and DNS out (default failsafes) =="
host=examples/protect-a-host
"$ctl" host-probe --state "$host/00-host-endpoints" --step "$host/01-restrict-host-ssh" --step "$host/02-web-in-dns-out"
echo "== the same with --failsafe-inbound none: now restrict-host-ssh alone decides SSH (IPv6 is outside 10.0.0.0/8) =="
"$ctl" host-probe --state "$host/00-host-endpoints" --step "$host/01-restrict-host-ssh" --failsafe-inbound none
echo
echo "Try: $ctl trace $(printf -- "--state %s " "${state[@]}")10.244.1.30 10.244.1.10 TCP --dst-port 80"
