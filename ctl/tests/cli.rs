//! `palisadectl` as users run it: the built binary on temporary manifest and flow files, checking
//! its output, its error messages and its exit codes (0 success, 1 failed check / bad flow /
//! selector error, 2 invalid state).

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// prod/web (10.0.1.1) accepts only TCP 80, and only from prod/client (10.0.1.3).
const STATE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: prod, labels: {app: client}}
status: {podIP: 10.0.1.3}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  selector: "app == 'web'"
  ingress:
  - {action: Log, protocol: TCP}
  - {action: Allow, protocol: TCP, source: {selector: "app == 'client'"}, destination: {ports: [80]}}
"#;

const ALLOWED: &str = r#"{"src": "10.0.1.3", "dst": "10.0.1.1", "protocol": "TCP", "dst_port": 80, "expect": "allow"}"#;
const DENIED: &str = r#"{"src": "192.0.2.1", "dst": "10.0.1.1", "protocol": "TCP", "dst_port": 80, "expect": "deny"}"#;

/// A temporary directory holding `state.yaml` ([`STATE`] unless given) and `flows.jsonl`.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(state: &str, flows: &[&str]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.yaml"), state).unwrap();
        std::fs::write(dir.path().join("flows.jsonl"), flows.join("\n") + "\n").unwrap();
        Files { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state.yaml")
    }

    fn flows(&self) -> PathBuf {
        self.dir.path().join("flows.jsonl")
    }

    /// `palisadectl eval --state <state> --flows <flows> [extra]`.
    fn eval(&self, extra: &[&str]) -> Output {
        let (state, flows) = (self.state(), self.flows());
        let mut args = vec!["eval", "--state", path(&state), "--flows", path(&flows)];
        args.extend_from_slice(extra);
        run(&args, None)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

// ---------------------------------------------------------------------------------------------
// eval
// ---------------------------------------------------------------------------------------------

#[test]
fn eval_prints_one_json_line_per_flow_with_verdict_and_trail() {
    let f = Files::new(STATE, &[ALLOWED, "", DENIED]);
    let out = f.eval(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "blank lines are skipped");

    let allowed = &lines[0];
    assert_eq!(allowed["verdict"], "allow");
    assert_eq!(allowed["flow"]["dst_port"], 80);
    let ingress = &allowed["ingress"];
    assert_eq!(ingress["endpoint"], "prod/web");
    assert_eq!(ingress["decided_by"]["by"], "rule");
    assert_eq!(ingress["decided_by"]["tier"], "default");
    assert_eq!(ingress["decided_by"]["policy"], "prod/web");
    assert_eq!(ingress["decided_by"]["rule"], 1);
    assert_eq!(ingress["matched"][0]["action"], "Log");
    assert_eq!(allowed["egress"]["decided_by"]["by"], "profile");
    assert_eq!(allowed["egress"]["decided_by"]["policy"], "kns.prod");

    let denied = &lines[1];
    assert_eq!(denied["verdict"], "deny");
    assert!(denied.get("egress").is_none(), "192.0.2.1 is not an endpoint");
    assert_eq!(denied["ingress"]["decided_by"], serde_json::json!({"by": "tier_default", "tier": "default"}));
}

#[test]
fn eval_reports_the_staged_verdict() {
    let staged = format!(
        "{STATE}---\napiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {{name: lockdown, namespace: prod}}\n\
         spec: {{order: 1, selector: \"app == 'web'\", ingress: [{{action: Deny}}]}}\n"
    );
    let f = Files::new(&staged, &[ALLOWED]);
    let line = &json_lines(&f.eval(&[]))[0];
    assert_eq!(line["verdict"], "allow");
    assert_eq!(line["staged_verdict"], "deny");
    assert_eq!(line["ingress"]["matched"][0]["staged"], true);
}

#[test]
fn eval_check_exits_0_when_every_expectation_holds() {
    let f = Files::new(STATE, &[ALLOWED, DENIED]);
    let out = f.eval(&["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn eval_check_exits_1_on_a_mismatch() {
    let wrong = DENIED.replace("\"deny\"", "\"allow\"");
    let f = Files::new(STATE, &[ALLOWED, &wrong]);
    let out = f.eval(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("{}:2: expected allow, got deny", f.flows().display())), "{}", stderr(&out));
    assert_eq!(json_lines(&out).len(), 2, "every flow is still printed");
}

#[test]
fn eval_without_check_ignores_expectations() {
    let wrong = DENIED.replace("\"deny\"", "\"allow\"");
    let out = Files::new(STATE, &[&wrong]).eval(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn eval_check_refuses_an_expectation_that_is_no_verdict() {
    let odd = ALLOWED.replace("\"allow\"", "\"maybe\"");
    let f = Files::new(STATE, &[&odd]);
    let out = f.eval(&["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("{}:1: expect must be", f.flows().display())), "{}", stderr(&out));
}

#[test]
fn eval_bad_flow_line_exits_1_naming_the_line() {
    let bad_address = r#"{"src": "10.0.1.300", "dst": "10.0.1.1", "protocol": "TCP"}"#;
    let f = Files::new(STATE, &[ALLOWED, "not json", bad_address, DENIED]);
    let out = f.eval(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:2: ", f.flows().display())), "{err}");
    assert!(err.contains(&format!("{}:3: src: \"10.0.1.300\" is not an IP address", f.flows().display())), "{err}");
    let verdicts: Vec<Value> = json_lines(&out).iter().map(|l| l["verdict"].clone()).collect();
    assert_eq!(verdicts, ["allow", "deny"], "the good lines are still evaluated");
}

#[test]
fn eval_reads_flows_from_standard_input() {
    let f = Files::new(STATE, &[]);
    let out = run(&["eval", "--state", path(&f.state()), "--flows", "-"], Some(&format!("{ALLOWED}\n{DENIED}\n")));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_lines(&out).len(), 2);
}

#[test]
fn eval_invalid_state_exits_2_naming_file_resource_and_field() {
    let bad = STATE.replace("protocol: TCP, source", "protocol: TCPP, source");
    let f = Files::new(&bad, &[ALLOWED]);
    let out = f.eval(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}: NetworkPolicy prod/web: spec.ingress[1].protocol: unknown protocol", f.state().display())), "{err}");
    assert_eq!(stdout(&out), "", "nothing is evaluated against an invalid state");
}

#[test]
fn eval_invalid_state_lists_every_error() {
    let bad = STATE.replace("selector: \"app == 'web'\"", "selector: \"app ==\"").replace("action: Log", "action: Logg");
    let out = Files::new(&bad, &[ALLOWED]).eval(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("(2 errors)"), "{err}");
    assert!(err.contains("NetworkPolicy prod/web: spec.selector: ") && err.contains("NetworkPolicy prod/web: spec.ingress[0].action: "), "{err}");
}

#[test]
fn eval_missing_flows_file_exits_2() {
    let f = Files::new(STATE, &[]);
    let out = run(&["eval", "--state", path(&f.state()), "--flows", path(&f.dir.path().join("nope.jsonl"))], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.jsonl"), "{}", stderr(&out));
}

#[test]
fn eval_state_can_be_several_paths() {
    let f = Files::new(STATE, &[ALLOWED]);
    let extra = f.dir.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(
        extra.join("deny.yaml"),
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-all}\nspec: {order: 1, ingress: [{action: Deny}]}\n",
    )
    .unwrap();
    let out = run(&["eval", "--state", path(&f.state()), path(&extra), "--flows", path(&f.flows())], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["verdict"], "deny");
    assert_eq!(line["ingress"]["decided_by"]["policy"], "deny-all");
}

// ---------------------------------------------------------------------------------------------
// trace
// ---------------------------------------------------------------------------------------------

#[test]
fn trace_prints_the_deciding_tier_policy_and_rule() {
    let f = Files::new(STATE, &[]);
    let out = run(&["trace", "--state", path(&f.state()), "10.0.1.3", "10.0.1.1", "TCP", "--dst-port", "80"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ingress of prod/web: ALLOW"), "{text}");
    assert!(text.contains("matched tier default, policy prod/web, rule 0 (Log)"), "{text}");
    assert!(text.contains("decided by tier default, policy prod/web, rule 1 (Allow)"), "{text}");
    assert!(text.contains("egress of prod/client: ALLOW"), "{text}");
    assert!(text.contains("decided by profile kns.prod, rule 0 (Allow)"), "{text}");
    assert!(text.trim_end().ends_with("verdict: ALLOW"), "{text}");
}

#[test]
fn trace_explains_a_tier_default_deny() {
    let f = Files::new(STATE, &[]);
    let out = run(&["trace", "--state", path(&f.state()), "192.0.2.1", "10.0.1.1", "6", "--dst-port", "80"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("egress: 192.0.2.1 is not an endpoint"), "{text}");
    assert!(text.contains("decided by end of tier default"), "{text}");
    assert!(text.trim_end().ends_with("verdict: DENY"), "{text}");
}

#[test]
fn trace_refuses_a_bad_flow() {
    let f = Files::new(STATE, &[]);
    let out = run(&["trace", "--state", path(&f.state()), "10.0.1.3", "10.0.1.1", "ICMP", "--dst-port", "80"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("dst_port: 80 given, but protocol 1 has no ports"), "{}", stderr(&out));
}

#[test]
fn trace_invalid_state_exits_2() {
    let f = Files::new("apiVersion: v1\nkind: Pod\nmetadata: {namespace: prod}\n", &[]);
    let out = run(&["trace", "--state", path(&f.state()), "10.0.1.3", "10.0.1.1", "TCP"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("{}: Pod (document 1): metadata.name: missing", f.state().display())), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// selector
// ---------------------------------------------------------------------------------------------

#[test]
fn selector_prints_match_per_line() {
    let input = r#"{"selector": "app == 'web' && !has(debug)", "labels": {"app": "web"}}
{"selector": "app == 'web' && !has(debug)", "labels": {"app": "web", "debug": ""}}

{"selector": ""}
"#;
    let out = run(&["selector"], Some(input));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_lines(&out), [serde_json::json!({"match": true}), serde_json::json!({"match": false}), serde_json::json!({"match": true})]);
}

#[test]
fn selector_errors_are_printed_and_exit_1() {
    let input = r#"{"selector": "app == 'web'", "labels": {"app": "web"}}
{"selector": "app = 'web'"}
{"selector": "all()", "lables": {}}
"#;
    let out = run(&["selector"], Some(input));
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], serde_json::json!({"match": true}));
    let e1 = lines[1]["error"].as_str().unwrap();
    assert!(e1.starts_with("line 2: invalid selector:") && e1.contains("position"), "{e1}");
    let e2 = lines[2]["error"].as_str().unwrap();
    assert!(e2.starts_with("line 3:") && e2.contains("lables"), "{e2}");
}

#[test]
fn selector_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("selectors.jsonl");
    std::fs::write(&file, r#"{"selector": "tier in {'a', 'b'}", "labels": {"tier": "b"}}"#).unwrap();
    let out = run(&["selector", "--file", path(&file)], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_lines(&out), [serde_json::json!({"match": true})]);
}
