//! The control-plane benchmark runs (as root): a change reaches a real agent through real etcd
//! and palisade-control, and a handful of simulated agents all receive a change. Times are not
//! asserted (the benchmark measures them).

use palisade_bench::sync::SyncRig;

#[test]
fn changes_reach_the_agent_and_every_subscriber() {
    let (control, dataplane) = (palisade_lab::built_binary("palisade-control"), palisade_lab::built_binary("palisade-dataplane"));
    let rig = SyncRig::up(&palisade_lab::unique_name("bs"), &control).expect("rig");
    let timed = rig.change_to_enforced(&dataplane, 50, 2, 2).expect("changes enforced");
    assert_eq!((timed.edits.len(), timed.adds.len()), (2, 2));
    drop(rig);
    let rig = SyncRig::up(&palisade_lab::unique_name("bs"), &control).expect("rig");
    let f = rig.fan_out(3, 50, 5).expect("fan-out");
    assert!(f.state_bytes > 0 && f.delta_max_ms >= f.delta_p50_ms, "{f:?}");
}
