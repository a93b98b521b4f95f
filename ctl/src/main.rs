//! `palisadectl`: the Palisade command-line tool.

use clap::{Parser, Subcommand, ValueEnum};
use palisade_policy::eval::{Decision, DirectionVerdict, Evaluator, Flow, RuleRef, Verdict};
use palisade_policy::flows::{parse_line, FlowSpec};
use palisade_policy::model::{proto, Cluster};
use palisade_policy::resources::NumOrString;
use palisade_policy::selector::Selector;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

mod lab_cmd;
mod store_cmd;

use palisade_lab::Protocol;

/// TLS when a directory of PEM files is given, else plaintext.
fn security(tls_dir: Option<PathBuf>) -> palisade_control::tls::Security {
    tls_dir.map_or(palisade_control::tls::Security::Plaintext, palisade_control::tls::Security::Tls)
}

/// Where palisade-control listens by default.
const DEFAULT_SERVER: &str = "http://127.0.0.1:5473";

#[derive(Parser)]
#[command(name = "palisadectl", version, about = "Palisade: evaluate, trace and manage Calico / Kubernetes network policy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// One JSON object per flow.
    Json,
    /// A table for people.
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate flows (JSON lines) against a policy state; prints one JSON line per flow.
    Eval {
        /// Manifest files or directories (repeatable); together they are the cluster state.
        #[arg(long, required = true, num_args = 1..)]
        state: Vec<PathBuf>,
        /// Flows file, one JSON object per line (`-` for standard input).
        #[arg(long)]
        flows: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "json")]
        output: Output,
        /// Compare each verdict with the flow's `expect` field; exit 1 on any difference.
        #[arg(long)]
        check: bool,
    },
    /// Explain, for one flow, which tier, policy and rule decides it and why.
    Trace {
        /// Manifest file or directory (repeat the flag for more).
        #[arg(long, required = true, action = clap::ArgAction::Append)]
        state: Vec<PathBuf>,
        /// Source address.
        src: String,
        /// Destination address.
        dst: String,
        /// Protocol name or number.
        protocol: String,
        /// Destination port.
        #[arg(long)]
        dst_port: Option<i64>,
        /// Source port.
        #[arg(long)]
        src_port: Option<i64>,
        /// ICMP type.
        #[arg(long)]
        icmp_type: Option<i64>,
        /// ICMP code.
        #[arg(long)]
        icmp_code: Option<i64>,
    },
    /// Bring up a lab from the state's pods (a network namespace each, veths to a node
    /// namespace), run palisade-dataplane on it, listen in every pod on its container ports,
    /// connect from every pod (and an external host) to every other, and print who reached whom.
    /// With --step, apply more manifests one after another while it runs and print the matrix
    /// after each. Everything is torn down after. Needs root.
    Probe {
        /// Manifest files or directories: the cluster state, pods included.
        #[arg(long, required = true, num_args = 1..)]
        state: Vec<PathBuf>,
        /// Manifests added to the state (cumulatively) after the first matrix; repeatable.
        #[arg(long)]
        step: Vec<PathBuf>,
        /// Ports to listen on and probe in every pod, instead of each pod's container ports.
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        /// Protocols for --ports: TCP, UDP, SCTP, ICMP.
        #[arg(long, value_delimiter = ',', default_value = "TCP")]
        protocols: Vec<String>,
        /// Output format: a truth table per port (`.` connected, `X` blocked) or JSON lines.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Time-out of each probe, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// RX queues per interface (dataplane workers).
        #[arg(long, default_value_t = 2)]
        queues: u32,
        /// Do not probe from the external host.
        #[arg(long)]
        no_external: bool,
    },
    /// Protect a bare-metal host in a lab with the state's HostEndpoints and policies: a host
    /// namespace with eth0 (10.91.0.1/24, fd91::1/64, network a) and eth1 (10.92.0.1/24, network b),
    /// palisade-dataplane on both, listeners on the host and in b; connect from a and b to the
    /// host, from a to b through it, and from the host to b, and print what connected. With
    /// --step, apply more manifests one after another and probe after each. Needs root.
    HostProbe {
        /// Manifest files or directories: HostEndpoints (interfaceName eth0, eth1) and policies.
        #[arg(long, visible_alias = "policy", required = true, num_args = 1..)]
        state: Vec<PathBuf>,
        /// Manifests added (cumulatively) after the first probe; repeatable.
        #[arg(long)]
        step: Vec<PathBuf>,
        /// Ports to listen on and probe, as protocol:port.
        #[arg(long, value_delimiter = ',', default_value = "tcp:22,tcp:80,tcp:8080,udp:53")]
        ports: Vec<String>,
        /// Failsafe ports to the host (Felix syntax, or `none`; default: Felix's defaults).
        #[arg(long)]
        failsafe_inbound: Option<String>,
        /// Failsafe ports from the host.
        #[arg(long)]
        failsafe_outbound: Option<String>,
        /// Output format: a table (`.` connected, `X` blocked) or JSON lines.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Time-out of each probe, in milliseconds.
        #[arg(long, default_value_t = 700)]
        timeout_ms: u64,
    },
    /// Store manifests in palisade-control (validated with everything stored; a file that does
    /// not load is refused whole).
    Apply {
        /// Manifest files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The control plane.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Mutual TLS with the PEM files of this directory (ca.pem, client.pem, client-key.pem);
        /// the server URL is then https://.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
    },
    /// List stored resources, as kubectl get.
    Get {
        /// Kind (NetworkPolicy, GlobalNetworkPolicy, Pod, ...; case-insensitive; `all` for every kind).
        kind: String,
        /// Name.
        name: Option<String>,
        /// Namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: store_cmd::GetOutput,
        /// The control plane.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Mutual TLS with the PEM files of this directory (ca.pem, client.pem, client-key.pem);
        /// the server URL is then https://.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
    },
    /// What the node agents last reported to the control plane: in sync, heartbeat, each
    /// endpoint's status.
    Status {
        /// One node (default: every node that reported).
        node: Option<String>,
        /// The control plane.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Mutual TLS with the PEM files of this directory (ca.pem, client.pem, client-key.pem);
        /// the server URL is then https://.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
    },
    /// Delete stored resources by kind and name, or those of manifest files.
    Delete {
        /// Kind.
        kind: Option<String>,
        /// Name.
        name: Option<String>,
        /// Namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Manifest files or directories whose resources to delete.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// The control plane.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Mutual TLS with the PEM files of this directory (ca.pem, client.pem, client-key.pem);
        /// the server URL is then https://.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
    },
    /// Make a directory of PEM files for mutual TLS between palisade-control and its clients: a
    /// new CA, a server certificate (for localhost, 127.0.0.1 and each --host), the
    /// administrators' client certificate, and for each --node a directory nodes/NODE for that
    /// node's agent (its certificate only lets it follow its own node's view).
    Certs {
        /// Where to write ca.pem, server.pem, server-key.pem, client.pem, client-key.pem.
        dir: PathBuf,
        /// More names or addresses the server certificate is valid for.
        #[arg(long)]
        host: Vec<String>,
        /// A node to make an agent certificate for (repeat for more).
        #[arg(long)]
        node: Vec<String>,
    },
    /// Show the counters of a running palisade-dataplane.
    Stats {
        /// Its stats socket.
        #[arg(long, default_value = "/run/palisade/dataplane.sock")]
        socket: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Test selectors: reads `{"selector": "...", "labels": {...}}` lines, prints `{"match": bool}`
    /// or `{"error": "..."}` for each.
    Selector {
        /// Input file (default: standard input).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval { state, flows, output, check } => eval(&state, &flows, output, check),
        Command::Trace { state, src, dst, protocol, dst_port, src_port, icmp_type, icmp_code } => {
            let protocol = protocol.parse::<i64>().map(NumOrString::Num).unwrap_or(NumOrString::Str(protocol));
            let spec = FlowSpec { src, dst, protocol, src_port, dst_port, icmp_type, icmp_code, expect: None, note: None };
            trace(&state, &spec)
        }
        Command::Selector { file } => selector(file),
        Command::Probe { state, step, ports, protocols, output, timeout_ms, queues, no_external } => lab_cmd::probe(lab_cmd::ProbeArgs {
            state,
            steps: step,
            ports,
            protocols,
            json: matches!(output, Output::Json),
            timeout: std::time::Duration::from_millis(timeout_ms),
            queues,
            external: !no_external,
        }),
        Command::HostProbe { state, step, ports, failsafe_inbound, failsafe_outbound, output, timeout_ms } => (|| {
            let ports = ports
                .iter()
                .map(|p| {
                    let (proto, port) = p.split_once(':').ok_or_else(|| format!("--ports {p:?}: expected protocol:port"))?;
                    Ok((proto.parse::<Protocol>().map_err(|e| e.to_string())?, port.parse::<u16>().map_err(|_| format!("--ports {p:?}: bad port"))?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let mut failsafes = Vec::new();
            for (flag, v) in [("--failsafe-inbound", failsafe_inbound), ("--failsafe-outbound", failsafe_outbound)] {
                if let Some(v) = v {
                    palisade_policy::host::parse_failsafes(&v).map_err(|e| format!("{flag}: {e}"))?;
                    failsafes.extend([flag.to_string(), v]);
                }
            }
            lab_cmd::host_probe(lab_cmd::HostProbeArgs {
                state,
                steps: step,
                ports,
                failsafes,
                json: matches!(output, Output::Json),
                timeout: std::time::Duration::from_millis(timeout_ms),
            })
        })(),
        Command::Apply { files, server, tls_dir } => store_cmd::apply(&server, &security(tls_dir), &files),
        Command::Get { kind, name, namespace, output, server, tls_dir } => {
            let kind = if kind.eq_ignore_ascii_case("all") { String::new() } else { kind };
            store_cmd::get(&server, &security(tls_dir), &kind, name.as_deref(), namespace.as_deref(), output)
        }
        Command::Status { node, server, tls_dir } => store_cmd::status(&server, &security(tls_dir), node.as_deref()),
        Command::Delete { kind, name, namespace, files, server, tls_dir } => {
            store_cmd::delete(&server, &security(tls_dir), kind.as_deref(), name.as_deref(), namespace.as_deref(), &files)
        }
        Command::Certs { dir, host, node } => palisade_control::tls::generate(&dir, &host, &node).map(|()| {
            println!("wrote ca.pem, server.pem, server-key.pem, client.pem, client-key.pem to {}", dir.display());
            for n in &node {
                println!("wrote ca.pem, client.pem, client-key.pem for node {n} to {}", dir.join("nodes").join(n).display());
            }
            ExitCode::SUCCESS
        }),
        Command::Stats { socket, output } => lab_cmd::stats(&socket, matches!(output, Output::Json)),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("palisadectl: {message}");
            ExitCode::from(2)
        }
    }
}

fn load(state: &[PathBuf]) -> Result<Cluster, String> {
    palisade_policy::load_cluster(state).map_err(|errors| {
        let mut s = format!("the policy state is invalid ({} error{}):", errors.len(), if errors.len() == 1 { "" } else { "s" });
        for e in errors {
            s.push_str(&format!("\n  {e}"));
        }
        s
    })
}

fn open_lines(path: Option<&PathBuf>) -> Result<Box<dyn BufRead>, String> {
    match path {
        None => Ok(Box::new(std::io::stdin().lock())),
        Some(p) if p.as_os_str() == "-" => Ok(Box::new(std::io::stdin().lock())),
        Some(p) => {
            std::fs::File::open(p).map(|f| Box::new(std::io::BufReader::new(f)) as Box<dyn BufRead>).map_err(|e| format!("{}: {e}", p.display()))
        }
    }
}

fn verdict_word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

fn eval(state: &[PathBuf], flows: &PathBuf, output: Output, check: bool) -> Result<ExitCode, String> {
    let cluster = load(state)?;
    let evaluator = Evaluator::new(&cluster);
    let mut failed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if matches!(output, Output::Table) {
        writeln!(out, "{:<40} {:<7} {:<8} decided by", "flow", "verdict", "expected").ok();
    }
    for (n, line) in open_lines(Some(flows))?.lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", flows.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = format!("{}:{}", flows.display(), n + 1);
        let parsed = parse_line(&line).and_then(|spec| spec.to_flow().map(|f| (spec, f)));
        let (spec, flow) = match parsed {
            Ok(x) => x,
            Err(e) => {
                eprintln!("palisadectl: {where_}: {e}");
                failed = true;
                continue;
            }
        };
        let v = evaluator.evaluate(&flow);
        let mismatch = check && spec.expect.as_deref().is_some_and(|e| e != verdict_word(v.allowed));
        if check && spec.expect.as_deref().is_some_and(|e| e != "allow" && e != "deny") {
            eprintln!("palisadectl: {where_}: expect must be \"allow\" or \"deny\"");
            failed = true;
        }
        if mismatch {
            eprintln!("palisadectl: {where_}: expected {}, got {}", spec.expect.as_deref().unwrap_or(""), verdict_word(v.allowed));
            failed = true;
        }
        match output {
            Output::Json => {
                let input: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let mut obj = serde_json::json!({ "flow": input, "verdict": verdict_word(v.allowed) });
                let m = obj.as_object_mut().unwrap();
                if let Some(e) = &v.egress {
                    m.insert("egress".into(), serde_json::to_value(e).unwrap());
                }
                if let Some(i) = &v.ingress {
                    m.insert("ingress".into(), serde_json::to_value(i).unwrap());
                }
                if let Some(s) = v.staged_allowed {
                    m.insert("staged_verdict".into(), verdict_word(s).into());
                }
                writeln!(out, "{obj}").ok();
            }
            Output::Table => {
                let decided = [&v.egress, &v.ingress].into_iter().flatten().find(|d| !d.allowed).or(v.ingress.as_ref()).or(v.egress.as_ref());
                let why = decided
                    .map(|d| format!("{} {}: {}", d.direction, d.endpoint, describe(&d.decided_by)))
                    .unwrap_or("no endpoint (not policed)".into());
                let mark = if mismatch { " MISMATCH" } else { "" };
                writeln!(out, "{:<40} {:<7} {:<8} {why}{mark}", flow_label(&flow), verdict_word(v.allowed), spec.expect.as_deref().unwrap_or("-"))
                    .ok();
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn flow_label(f: &Flow) -> String {
    let p = proto::name(f.protocol).map(str::to_string).unwrap_or_else(|| f.protocol.to_string());
    if proto::has_ports(f.protocol) {
        format!("{} -> {} {p}/{}", f.src, f.dst, f.dst_port)
    } else if let Some(t) = f.icmp_type {
        format!("{} -> {} {p} type {t}", f.src, f.dst)
    } else {
        format!("{} -> {} {p}", f.src, f.dst)
    }
}

fn rule_ref(r: &RuleRef) -> String {
    let tier = r.tier.as_ref().map(|t| format!("tier {t}, ")).unwrap_or_default();
    let kind = if r.tier.is_some() { "policy" } else { "profile" };
    let staged = if r.staged { " (staged: not enforced)" } else { "" };
    format!("{tier}{kind} {}, rule {} ({}){staged}", r.policy, r.rule, r.action)
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::Rule(r) | Decision::Profile(r) => rule_ref(r),
        Decision::TierDefault { tier } => format!("end of tier {tier}: policies applied but none allowed, tier default Deny"),
        Decision::NoProfileMatch => "no policy or profile allowed it (default deny)".into(),
        Decision::FallThrough => "no untracked or pre-DNAT rule matched: the next chain decides".into(),
        Decision::NoForwardPolicy => "forwarded, and no applyOnForward policy applies: allowed".into(),
    }
}

fn trace(state: &[PathBuf], spec: &FlowSpec) -> Result<ExitCode, String> {
    let cluster = load(state)?;
    let flow = spec.to_flow()?;
    let v: Verdict = Evaluator::new(&cluster).evaluate(&flow);
    println!("flow: {}", flow_label(&flow));
    let side = |label: &str, d: &Option<DirectionVerdict>, ip| match d {
        None => println!("{label}: {ip} is not an endpoint; no {} policy applies", if label == "egress" { "egress" } else { "ingress" }),
        Some(d) => {
            println!("{label} of {}: {}", d.endpoint, verdict_word(d.allowed).to_uppercase());
            for m in &d.matched {
                println!("  matched {}", rule_ref(m));
            }
            println!("  decided by {}", describe(&d.decided_by));
        }
    };
    side("egress", &v.egress, flow.src);
    side("ingress", &v.ingress, flow.dst);
    println!("verdict: {}", verdict_word(v.allowed).to_uppercase());
    if let Some(s) = v.staged_allowed {
        println!("with staged policies enforced: {}", verdict_word(s).to_uppercase());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorLine {
    selector: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn selector(file: Option<PathBuf>) -> Result<ExitCode, String> {
    let mut failed = false;
    for (n, line) in open_lines(file.as_ref())?.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<SelectorLine>(&line) {
            Err(e) => serde_json::json!({ "error": format!("line {}: {e}", n + 1) }),
            Ok(l) => match Selector::parse(&l.selector) {
                Ok(sel) => serde_json::json!({ "match": sel.matches(&l.labels) }),
                Err(e) => serde_json::json!({ "error": format!("line {}: invalid selector: {e}", n + 1) }),
            },
        };
        failed |= answer.get("error").is_some();
        println!("{answer}");
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
