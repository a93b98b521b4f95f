//! `palisadectl probe` and `stats` as a user runs them: a lab from an example's pods, the real
//! dataplane, JSON lines per probe, a step applied while it runs, and everything removed after.

use serde_json::Value;
use std::process::Command;

fn palisadectl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run palisadectl")
}

fn namespaces() -> String {
    String::from_utf8(Command::new("ip").args(["netns", "list"]).output().expect("ip netns").stdout).expect("utf-8")
}

#[test]
fn probe_prints_the_matrix_before_and_after_a_step_and_cleans_up() {
    let out = palisadectl(&[
        "probe",
        "--state",
        "examples/zero-trust-walkthrough/00-setup",
        "--step",
        "examples/zero-trust-walkthrough/01-default-deny-all",
        "--no-external",
        "--timeout-ms",
        "400",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let (before, after): (Vec<&Value>, Vec<&Value>) = lines.iter().partition(|v| v["step"].as_str().unwrap().ends_with("00-setup"));
    assert!(!before.is_empty() && before.len() == after.len(), "both steps probe the same cells");
    for v in &lines {
        for key in ["from", "to", "port", "protocol", "allowed"] {
            assert!(!v[key].is_null(), "{key} in {v}");
        }
    }
    // No policy: everything connects. After the namespace's default deny, nothing reaches or
    // leaves zero-trust-demo, and the legacy namespace still talks to itself.
    assert!(before.iter().all(|v| v["allowed"] == true), "default allow: {before:?}");
    for v in &after {
        let demo = v["from"].as_str().unwrap().starts_with("zero-trust-demo/") || v["to"].as_str().unwrap().starts_with("zero-trust-demo/");
        assert_eq!(v["allowed"] == true, !demo, "after default deny: {v}");
    }
    assert!(!namespaces().contains("pp"), "the lab is gone: {}", namespaces());
}

#[test]
fn stats_without_a_dataplane_is_a_clear_error() {
    let out = palisadectl(&["stats", "--socket", "/run/palisade/nothing-here.sock"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/palisade/nothing-here.sock"), "{err}");
}
