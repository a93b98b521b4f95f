//! `palisadectl probe`, `host-probe` and `stats`: the connectivity matrix through the real
//! dataplane in a lab built from the state's pods, the same for a protected bare-metal host, and
//! the counters of a running dataplane.

use palisade_lab::dataplane::{read_stats, Dataplane};
use palisade_lab::matrix::{self, Outcome};
use palisade_lab::{HostLab, Lab, Listeners, Protocol, SIDE_A, SIDE_B};
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// What `palisadectl probe` was asked.
pub struct ProbeArgs {
    pub state: Vec<PathBuf>,
    pub steps: Vec<PathBuf>,
    pub ports: Vec<u16>,
    pub protocols: Vec<String>,
    pub json: bool,
    pub timeout: Duration,
    pub queues: u32,
    pub external: bool,
}

#[derive(Serialize)]
struct StepOutcome<'a> {
    step: &'a str,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

/// The `palisade-dataplane` binary: next to this one (cargo's target directory, or an install).
fn dataplane_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("palisade-dataplane");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} not found: build it with `cargo build -p palisade-dataplane`", bin.display()))
    }
}

/// Copies a manifest file or directory to `to` (a new path).
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
        for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("{}: {e}", from.display()))
    }
}

/// Adds `paths` to the watched state directory in one atomic rename, so the dataplane never
/// sees half a step.
fn add_to_state(state_dir: &Path, index: usize, paths: &[PathBuf]) -> Result<(), String> {
    let staging = state_dir.with_extension(format!("staging{index}"));
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    for (i, p) in paths.iter().enumerate() {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        copy_tree(p, &staging.join(format!("{i:02}-{name}")))?;
    }
    std::fs::rename(&staging, state_dir.join(format!("{index:02}"))).map_err(|e| e.to_string())
}

/// Runs the matrix for the state, then again after each step; tears everything down after.
pub fn probe(args: ProbeArgs) -> Result<ExitCode, String> {
    let protocols = args.protocols.iter().map(|p| p.parse::<Protocol>().map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    let ports = (!args.ports.is_empty()).then(|| args.ports.iter().flat_map(|&port| protocols.iter().map(move |&p| (p, port))).collect::<Vec<_>>());
    let cluster = crate::load(&args.state)?;
    for (i, _) in args.steps.iter().enumerate() {
        let upto: Vec<PathBuf> = args.state.iter().chain(&args.steps[..=i]).cloned().collect();
        crate::load(&upto).map_err(|e| format!("step {}: {e}", args.steps[i].display()))?;
    }
    let targets = matrix::targets(&cluster, &args.state, ports.as_deref())?;
    if targets.is_empty() {
        return Err("the state has no pods with addresses to probe".into());
    }
    let binary = dataplane_binary()?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let state_dir = work.path().join("state");
    std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
    add_to_state(&state_dir, 0, &args.state)?;

    let lab = Lab::up(&matrix::lab_spec(&palisade_lab::unique_name("pp"), args.queues, &targets)).map_err(|e| e.to_string())?;
    let mut dp = Dataplane::start(&binary, &lab, &state_dir, args.queues)?;
    let _listeners = matrix::listen(&lab, &targets)?;
    let stdout = std::io::stdout();
    let labels: Vec<String> = std::iter::once(display_name(&args.state)).chain(args.steps.iter().map(|s| s.display().to_string())).collect();
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            let before = dp.revision();
            add_to_state(&state_dir, i, &args.steps[i - 1..i])?;
            dp.wait_for(before + 1, Duration::from_secs(20))?;
        }
        let outcomes = matrix::probe_all(&lab, &targets, args.external, args.timeout, 16)?;
        let mut out = stdout.lock();
        if args.json {
            for o in &outcomes {
                let line =
                    if args.steps.is_empty() { serde_json::to_string(o) } else { serde_json::to_string(&StepOutcome { step: label, outcome: o }) };
                writeln!(out, "{}", line.map_err(|e| e.to_string())?).ok();
            }
        } else {
            writeln!(out, "== {label} ==\n{}", matrix::table(&outcomes)).ok();
        }
    }
    drop(dp);
    lab.down().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn display_name(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
}

/// Prints a running dataplane's counters.
pub fn stats(socket: &Path, json: bool) -> Result<ExitCode, String> {
    let v = read_stats(socket)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    let st = &v["status"];
    println!("revision {}  endpoints {}  interfaces {}", st["revision"], st["endpoints"].as_array().map_or(0, |a| a.len()), st["interfaces"]);
    if st["host_interfaces"].as_object().is_some_and(|m| !m.is_empty()) {
        println!("host interfaces (interface: HostEndpoint) {}", st["host_interfaces"]);
    }
    if let Some(e) = st["last_error"].as_str() {
        println!("last rejected state: {e}");
    }
    let p = &v["packets"];
    println!("packets  rx {}  tx {}  tracked {}  allowed-new {}", p["rx"], p["tx"], p["tracked"], p["allowed_new"]);
    for (section, key) in [("drops", &p["drops"]), ("rules (new flows)", &p["rules"]), ("xdp", &v["xdp"]), ("conntrack", &v["conntrack"])] {
        println!("{section}:");
        if let Some(m) = key.as_object() {
            for (k, n) in m {
                println!("  {n:>10}  {k}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `palisadectl host-probe` was asked.
pub struct HostProbeArgs {
    pub state: Vec<PathBuf>,
    pub steps: Vec<PathBuf>,
    pub ports: Vec<(Protocol, u16)>,
    pub failsafes: Vec<String>,
    pub json: bool,
    pub timeout: Duration,
}

/// One checked connection of `host-probe`.
#[derive(Serialize)]
struct HostOutcome<'a> {
    step: &'a str,
    path: &'static str,
    protocol: String,
    port: u16,
    connected: bool,
}

/// Builds a host lab, protects it with the state's HostEndpoints and policies, and probes the
/// host, the traffic it routes and its own connections out; again after each step.
pub fn host_probe(args: HostProbeArgs) -> Result<ExitCode, String> {
    for i in 0..=args.steps.len() {
        let upto: Vec<PathBuf> = args.state.iter().chain(&args.steps[..i]).cloned().collect();
        crate::load(&upto)?;
    }
    let binary = dataplane_binary()?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let state_dir = work.path().join("state");
    std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
    add_to_state(&state_dir, 0, &args.state)?;
    let lab = HostLab::up(&palisade_lab::unique_name("hp")).map_err(|e| e.to_string())?;
    let _listeners = [lab.host_netns(), lab.client_netns(SIDE_B)]
        .iter()
        .map(|ns| Listeners::start(ns, &args.ports).map_err(|e| format!("listeners: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let extra: Vec<&str> = args.failsafes.iter().map(String::as_str).collect();
    let mut dp = Dataplane::start_host(&binary, &lab, &state_dir, &extra)?;
    // (label, from namespace, to address)
    let paths: [(&'static str, &str, IpAddr); 5] = [
        ("a -> host (IPv4)", lab.client_netns(SIDE_A), SIDE_A.host_ip(4)),
        ("a -> host (IPv6)", lab.client_netns(SIDE_A), SIDE_A.host_ip(6)),
        ("b -> host (IPv4)", lab.client_netns(SIDE_B), SIDE_B.host_ip(4)),
        ("a -> b, routed by the host", lab.client_netns(SIDE_A), SIDE_B.client_ip(4)),
        ("host -> b", lab.host_netns(), SIDE_B.client_ip(4)),
    ];
    let labels: Vec<String> = std::iter::once(display_name(&args.state)).chain(args.steps.iter().map(|s| s.display().to_string())).collect();
    let mut out = std::io::stdout().lock();
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            let before = dp.revision();
            add_to_state(&state_dir, i, &args.steps[i - 1..i])?;
            dp.wait_for(before + 1, Duration::from_secs(20))?;
        }
        if !args.json {
            let head: String = args.ports.iter().map(|(p, port)| format!(" {:>9}", format!("{p}/{port}"))).collect();
            writeln!(out, "== {label} ==\n{:<28}{head}", "").ok();
        }
        for (name, ns, dst) in &paths {
            let mut row = format!("{name:<28}");
            for &(protocol, port) in &args.ports {
                let connected = palisade_lab::probe(ns, *dst, protocol, port, args.timeout).map_err(|e| e.to_string())?;
                if args.json {
                    let o = HostOutcome { step: label, path: name, protocol: protocol.to_string(), port, connected };
                    writeln!(out, "{}", serde_json::to_string(&o).map_err(|e| e.to_string())?).ok();
                }
                row += &format!(" {:>9}", if connected { "." } else { "X" });
            }
            if !args.json {
                writeln!(out, "{row}").ok();
            }
        }
    }
    drop(dp);
    Ok(ExitCode::SUCCESS)
}
