//! The local-delivery benchmark's paths really deliver (as root): datagrams from the client reach
//! the host's sockets through the kernel, nftables and the dataplane, and TCP connects through
//! each. Rates are not asserted (benchmarks measure them).

use palisade_bench::forward::Traffic;
use palisade_bench::local::{HostRig, LocalPath};
use std::path::PathBuf;
use std::time::Duration;

/// `palisade-dataplane` as built for this test run.
fn dataplane() -> PathBuf {
    palisade_lab::built_binary("palisade-dataplane")
}

#[test]
fn every_path_delivers_to_the_host() {
    let rig = HostRig::up(&palisade_lab::unique_name("bl")).expect("lab");
    let (warmup, window) = (Duration::from_millis(300), Duration::from_millis(700));
    for (path, traffic) in
        [(LocalPath::Kernel, Traffic::One), (LocalPath::Nft, Traffic::New), (LocalPath::Palisade, Traffic::One), (LocalPath::Palisade, Traffic::New)]
    {
        let w = rig.measure(path, traffic, &dataplane(), warmup, window).unwrap_or_else(|e| panic!("{}: {e}", path.name()));
        assert!(w.delivered_pps > 1000.0, "{} {} delivered almost nothing: {w:?}", path.name(), traffic.name());
        assert!(w.delivered_pps <= w.offered_pps * 1.05, "{} delivered more than was sent: {w:?}", path.name());
    }
    for path in [LocalPath::Nft, LocalPath::Palisade] {
        let l = rig.latency(path, &dataplane(), 5, 20).unwrap_or_else(|e| panic!("{} latency: {e}", path.name()));
        assert!(l.connect_p50_us > 0.0 && l.rtt_p50_us > 0.0, "{l:?}");
    }
}
