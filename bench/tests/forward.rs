//! The packet-rate benchmark's paths really forward (as root): frames from the generator reach
//! the sink through the bare forwarder, the dataplane and nftables, and the lab is left clean.
//! Rates are not asserted (benchmarks measure them).

use palisade_bench::forward::{ForwardPath, Rig, Traffic};
use std::path::PathBuf;
use std::time::Duration;

/// `palisade-dataplane` as built for this test run.
fn dataplane() -> PathBuf {
    palisade_lab::built_binary("palisade-dataplane")
}

#[test]
fn every_path_forwards() {
    let rig = Rig::up(&palisade_lab::unique_name("bf")).expect("lab");
    let (warmup, window) = (Duration::from_millis(300), Duration::from_millis(700));
    let run = |path, traffic| rig.measure(path, traffic, &dataplane(), warmup, window).unwrap_or_else(|e| panic!("{}: {e}", path.name()));
    let mut results = Vec::new();
    for (path, traffic) in [
        (ForwardPath::Bare, Traffic::One),
        (ForwardPath::Palisade(50), Traffic::New),
        (ForwardPath::Kernel, Traffic::Many),
        (ForwardPath::NftLinear(50), Traffic::New),
        (ForwardPath::NftSet(50), Traffic::One),
    ] {
        let w = run(path, traffic);
        results.push(format!("{} {}: {w:?}", path.name(), traffic.name()));
        assert!(w.forwarded_pps > 1000.0, "{} forwarded almost nothing: {w:?}\n{}", path.name(), results.join("\n"));
        assert!(w.forwarded_pps <= w.offered_pps * 1.05, "{} forwarded more than was sent: {w:?}", path.name());
    }
    eprintln!("{}", results.join("\n"));
    rig.down().expect("lab teardown");
}
