//! Every example in `examples/` (from the guides in shared/seeds) loads, and each of its flows gets
//! the verdict the example expects. An example is a directory of manifests with `flows.jsonl`, or
//! numbered step directories applied cumulatively, each with its own `flows.jsonl`.

use palisade_policy::eval::Evaluator;
use palisade_policy::flows::parse_line;
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// (state paths, flows file) for each step of an example.
fn steps(example: &Path) -> Vec<(Vec<PathBuf>, PathBuf)> {
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(example).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    subdirs.sort();
    if subdirs.is_empty() {
        return vec![(vec![example.to_path_buf()], example.join("flows.jsonl"))];
    }
    let mut out = Vec::new();
    for (i, step) in subdirs.iter().enumerate() {
        let flows = step.join("flows.jsonl");
        if flows.exists() {
            out.push((subdirs[..=i].to_vec(), flows));
        }
    }
    out
}

#[test]
fn every_example_gives_its_expected_verdicts() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(examples_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    examples.sort();
    assert!(examples.len() >= 10, "expected the seed examples, found {}", examples.len());
    let mut failures = Vec::new();
    let mut checked = 0;
    for ex in &examples {
        for (state, flows) in steps(ex) {
            let cluster = match palisade_policy::load_cluster(&state) {
                Ok(c) => c,
                Err(es) => {
                    failures.push(format!("{}: {}", flows.display(), es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")));
                    continue;
                }
            };
            let ev = Evaluator::new(&cluster);
            for (n, line) in std::fs::read_to_string(&flows).unwrap().lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let spec = parse_line(line).unwrap_or_else(|e| panic!("{}:{}: {e}", flows.display(), n + 1));
                let flow = spec.to_flow().unwrap_or_else(|e| panic!("{}:{}: {e}", flows.display(), n + 1));
                let expect = spec.expect.as_deref().unwrap_or_else(|| panic!("{}:{}: no expect", flows.display(), n + 1));
                let v = ev.evaluate(&flow);
                let got = if v.allowed { "allow" } else { "deny" };
                checked += 1;
                if got != expect {
                    failures.push(format!(
                        "{}:{}: expected {expect}, got {got} ({})\n    egress: {:?}\n    ingress: {:?}",
                        flows.display(),
                        n + 1,
                        spec.note.unwrap_or_default(),
                        v.egress.map(|d| d.decided_by),
                        v.ingress.map(|d| d.decided_by)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} example flows failed:\n{}", failures.len(), failures.join("\n"));
    assert!(checked >= 100, "only {checked} flows checked");
}
