//! The control-plane benchmark runs (as root): a change reaches a real agent through real etcd
//! and palisade-control, and a handful of simulated agents all receive a change. Times are not
//! asserted (the benchmark measures them).

use palisade_bench::sync::SyncRig;
use std::path::PathBuf;

/// The directory of the binaries built for this test run.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(|deps| deps.parent()).expect("target directory").to_path_buf()
}

#[test]
fn changes_reach_the_agent_and_every_subscriber() {
    let dir = bin_dir();
    let rig = SyncRig::up(&palisade_lab::unique_name("bs"), &dir.join("palisade-control")).expect("rig");
    let times = rig.change_to_enforced(&dir.join("palisade-dataplane"), 50, 2).expect("changes enforced");
    assert_eq!(times.len(), 2);
    drop(rig);
    let rig = SyncRig::up(&palisade_lab::unique_name("bs"), &dir.join("palisade-control")).expect("rig");
    let f = rig.fan_out(3, 50, 5).expect("fan-out");
    assert!(f.state_bytes > 0 && f.delta_max_ms >= f.delta_p50_ms, "{f:?}");
}
