//! `palisade-bench`: Palisade's benchmarks. Each scenario prints one JSON line; `--plot` draws an
//! SVG of the results.

use clap::{Parser, Subcommand};
use palisade_bench::classbench::{self, Filter, Shape};
use palisade_bench::forward::{ForwardPath, PathKind, Rig, Traffic, Window};
use palisade_bench::local::{HostRig, LocalPath, Window as LocalWindow};
use palisade_bench::sync::SyncRig;
use palisade_bench::{k8s, plot, tss};
use palisade_dataplane::classifier::linear::LinearClassifier;
use palisade_dataplane::classifier::tree::{TreeClassifier, TreeRule};
use palisade_dataplane::compile::Compiler;
use palisade_policy::eval::Evaluator;
use palisade_policy::model::Direction;
use serde_json::{json, Value};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "palisade-bench", about = "Palisade benchmarks (JSON lines on standard output)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classifier lookups, build time, memory and updates against tuple-space search and a
    /// linear scan. With no rule source given, runs the whole matrix: acl/fw/ipc at 1K, 10K and
    /// 100K rules and Kubernetes-shaped clusters of 100, 1K and 10K policies.
    Classify {
        /// A ClassBench filter file.
        #[arg(long, conflicts_with_all = ["shape", "k8s"])]
        rules: Option<PathBuf>,
        /// Generate a ClassBench-like set of this shape.
        #[arg(long, value_enum)]
        shape: Option<Shape>,
        /// Number of generated rules.
        #[arg(long, default_value_t = 10_000)]
        size: usize,
        /// Generate a Kubernetes-shaped cluster with this many policies.
        #[arg(long)]
        k8s: Option<usize>,
        /// Packets per trace.
        #[arg(long, default_value_t = 1_000_000)]
        packets: usize,
        /// Packets for the linear-scan and evaluator baselines (they are slow at large sizes).
        #[arg(long, default_value_t = 20_000)]
        baseline_packets: usize,
        /// Write the generated ClassBench set to this file.
        #[arg(long)]
        write_rules: Option<PathBuf>,
        /// Draw the results as an SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Packet rates (run as root): 64-byte UDP from a generator pod through the node to a sink pod,
    /// forwarded by a bare AF_XDP forwarder, by palisade-dataplane with policies of each rule count,
    /// and by Linux with nftables carrying the same rules (none, linear chain, set). Paths are
    /// interleaved in each round; prints every window, then per path and traffic the median and
    /// range and the ratios to the baselines.
    Forward {
        /// Rule counts of the policy (Palisade and nftables paths).
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
        rules: Vec<usize>,
        /// Traffic patterns.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Traffic::One, Traffic::Many, Traffic::New])]
        traffic: Vec<Traffic>,
        /// Paths to measure.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [PathKind::Bare, PathKind::Palisade, PathKind::Kernel, PathKind::NftLinear, PathKind::NftSet])]
        paths: Vec<PathKind>,
        #[command(flatten)]
        windows: Windows,
        /// Draw the summary as an SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Local delivery (run as root): 64-byte UDP from a client to a protected host's own sockets
    /// through the kernel with no filter, nftables with the host policy, and palisade-dataplane
    /// with the same policy as a HostEndpoint; then TCP connect and round-trip latency to the host.
    /// Paths are interleaved in each round; prints every window, then medians, ranges and ratios.
    Local {
        /// Traffic patterns (one flow: Palisade's kernel fast path; new flows: every frame through
        /// userspace and the reinjection path).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Traffic::One, Traffic::New])]
        traffic: Vec<Traffic>,
        /// Paths to measure.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [LocalPath::Kernel, LocalPath::Nft, LocalPath::Palisade])]
        paths: Vec<LocalPath>,
        #[command(flatten)]
        windows: Windows,
        /// New TCP connections timed per path.
        #[arg(long, default_value_t = 300)]
        connections: usize,
        /// Echo round trips timed per path on an established connection.
        #[arg(long, default_value_t = 3000)]
        round_trips: usize,
    },
    /// The control plane (run as root): policy change → enforced by an agent with a policy of
    /// `--rules` rules loaded (p50/p99 over `--changes` edits of a policy, and over a fifth as many
    /// new policies), then fan-out of one change to
    /// `--agents` simulated agents with `--pods` pods and `--policies` policies stored. Real
    /// etcd and palisade-control in a namespace of their own.
    Sync {
        /// Rules of the policy loaded while changes are timed.
        #[arg(long, default_value_t = 10_000)]
        rules: usize,
        /// Changes timed.
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// Simulated agents for the fan-out (0: no fan-out).
        #[arg(long, default_value_t = 1_000)]
        agents: usize,
        /// Pods stored for the fan-out.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Policies stored for the fan-out.
        #[arg(long, default_value_t = 1_000)]
        policies: usize,
        /// The palisade-dataplane and palisade-control binaries' directory (default: this one's).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Draws the SVG of saved results (the JSON lines of `classify` or `forward`).
    Plot {
        /// The saved JSON lines.
        results: PathBuf,
        /// The SVG to write.
        svg: PathBuf,
    },
}

/// How the packet benchmarks measure: rounds of interleaved windows.
#[derive(clap::Args)]
struct Windows {
    /// Rounds (each measures every path once per traffic pattern).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of a measured window.
    #[arg(long, default_value_t = 2000)]
    window_ms: u64,
    /// Traffic before each window.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// The palisade-dataplane binary (default: next to this one).
    #[arg(long)]
    dataplane: Option<PathBuf>,
}

impl Windows {
    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }

    fn dataplane(&self) -> PathBuf {
        self.dataplane.clone().unwrap_or_else(|| palisade_lab::built_binary("palisade-dataplane"))
    }
}

fn main() {
    let (rules, shape, size, k8s, packets, baseline_packets, write_rules, plot, seed) = match Cli::parse().command {
        Command::Classify { rules, shape, size, k8s, packets, baseline_packets, write_rules, plot, seed } => {
            (rules, shape, size, k8s, packets, baseline_packets, write_rules, plot, seed)
        }
        Command::Forward { rules, traffic, paths, windows, plot } => {
            let dataplane = windows.dataplane();
            let run = ForwardRun { rules, traffic, paths, rounds: windows.rounds, window: windows.window(), warmup: windows.warmup() };
            let summary = forward_bench(&run, &dataplane).unwrap_or_else(|e| fail(&e));
            if let Some(path) = plot {
                plot::draw_forward(&path, &summary).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
            }
            return;
        }
        Command::Local { traffic, paths, windows, connections, round_trips } => {
            let dataplane = windows.dataplane();
            let run =
                LocalRun { traffic, paths, rounds: windows.rounds, window: windows.window(), warmup: windows.warmup(), connections, round_trips };
            local_bench(&run, &dataplane).unwrap_or_else(|e| fail(&e));
            return;
        }
        Command::Sync { rules, changes, agents, pods, policies, bin_dir } => {
            let dir = bin_dir.unwrap_or_else(|| palisade_lab::built_binary("palisade-control").parent().map(PathBuf::from).unwrap_or_default());
            sync_bench(&dir, rules, changes, agents, pods, policies).unwrap_or_else(|e| fail(&e));
            return;
        }
        Command::Plot { results, svg } => {
            let text = std::fs::read_to_string(&results).unwrap_or_else(|e| fail(&format!("{}: {e}", results.display())));
            let lines: Vec<Value> = text
                .lines()
                .enumerate()
                .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| fail(&format!("{} line {}: {e}", results.display(), i + 1))))
                .collect();
            let drawn = if lines.iter().any(|v| v["scenario"] == "forward") { plot::draw_forward(&svg, &lines) } else { plot::draw(&svg, &lines) };
            drawn.unwrap_or_else(|e| fail(&format!("{}: {e}", svg.display())));
            return;
        }
    };
    let mut results = Vec::new();
    let mut emit = |v: Value| {
        println!("{v}");
        results.push(v);
    };
    let p = Params { packets, baseline_packets, seed };
    if let Some(path) = rules {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
        let filters = classbench::parse(&text).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
        if filters.is_empty() {
            fail(&format!("{}: no filters", path.display()));
        }
        for v in classbench_scenario(&path.display().to_string(), &filters, &p) {
            emit(v);
        }
    } else if shape.is_some() || k8s.is_some() {
        if let Some(s) = shape {
            let filters = classbench::generate(s, size, seed);
            if let Some(w) = &write_rules {
                std::fs::write(w, classbench::format(&filters)).unwrap_or_else(|e| fail(&format!("{}: {e}", w.display())));
            }
            for v in classbench_scenario(&format!("{s:?}").to_lowercase(), &filters, &p) {
                emit(v);
            }
        }
        if let Some(n) = k8s {
            emit(k8s_scenario(n, &p));
        }
    } else {
        for s in [Shape::Acl, Shape::Fw, Shape::Ipc] {
            for n in [1_000, 10_000, 100_000] {
                for v in classbench_scenario(&format!("{s:?}").to_lowercase(), &classbench::generate(s, n, seed), &p) {
                    emit(v);
                }
            }
        }
        for n in [100, 1_000, 10_000] {
            emit(k8s_scenario(n, &p));
        }
    }
    if let Some(path) = plot {
        plot::draw(&path, &results).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
}

struct ForwardRun {
    rules: Vec<usize>,
    traffic: Vec<Traffic>,
    paths: Vec<PathKind>,
    rounds: usize,
    window: Duration,
    warmup: Duration,
}

/// Runs the packet-rate benchmark; prints each window and the summary as JSON lines; returns the summary.
fn forward_bench(run: &ForwardRun, dataplane: &std::path::Path) -> Result<Vec<Value>, String> {
    if !dataplane.is_file() {
        return Err(format!("{}: not found (build it: cargo build --release -p palisade-dataplane)", dataplane.display()));
    }
    let paths: Vec<ForwardPath> = run.paths.iter().flat_map(|k| k.with_rules(&run.rules)).collect();
    let rig = Rig::up("pbench").map_err(|e| format!("lab: {e}"))?;
    let mut windows: Vec<(ForwardPath, Traffic, Window)> = Vec::new();
    let result = (|| {
        for round in 0..run.rounds {
            for &traffic in &run.traffic {
                for &path in &paths {
                    let w = rig
                        .measure(path, traffic, dataplane, run.warmup, run.window)
                        .map_err(|e| format!("{} / {}: {e}", path.name(), traffic.name()))?;
                    println!(
                        "{}",
                        json!({"scenario": "forward-window", "round": round, "path": path.name(), "rules": path.rules(), "traffic": traffic.name(),
                               "offered_pps": w.offered_pps.round(), "forwarded_pps": w.forwarded_pps.round(),
                               "cpu_ns_per_packet": (w.cpu_ns_per_packet * 10.0).round() / 10.0, "cpu_busy": (w.cpu_busy * 1000.0).round() / 1000.0})
                    );
                    windows.push((path, traffic, w));
                }
            }
        }
        Ok::<(), String>(())
    })();
    rig.down()?;
    result?;
    let mut summary = Vec::new();
    for &traffic in &run.traffic {
        let median_of = |path: ForwardPath, f: fn(&Window) -> f64| {
            let mut v: Vec<f64> = windows.iter().filter(|(p, t, _)| *p == path && *t == traffic).map(|(_, _, w)| f(w)).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let bare = if paths.contains(&ForwardPath::Bare) { median_of(ForwardPath::Bare, |w| w.forwarded_pps).0 } else { f64::NAN };
        for &path in &paths {
            let (pps, min, max) = median_of(path, |w| w.forwarded_pps);
            let mut v = json!({
                "scenario": "forward", "path": path.name(), "rules": path.rules(), "traffic": traffic.name(),
                "forwarded_pps": pps.round(), "min_pps": min.round(), "max_pps": max.round(),
                "cpu_ns_per_packet": (median_of(path, |w| w.cpu_ns_per_packet).0 * 10.0).round() / 10.0,
                "vs_bare": (pps / bare * 1000.0).round() / 1000.0,
                "machine": machine(), "rounds": run.rounds, "window_ms": run.window.as_millis() as u64,
            });
            if let ForwardPath::Palisade(n) = path {
                for nft in [ForwardPath::NftLinear(n), ForwardPath::NftSet(n)].into_iter().filter(|p| paths.contains(p)) {
                    v[format!("vs_{}", nft.name().trim_end_matches(&format!("-{n}-rules")).replace('-', "_"))] =
                        json!((pps / median_of(nft, |w| w.forwarded_pps).0 * 100.0).round() / 100.0);
                }
            }
            println!("{v}");
            summary.push(v);
        }
    }
    Ok(summary)
}

struct LocalRun {
    traffic: Vec<Traffic>,
    paths: Vec<LocalPath>,
    rounds: usize,
    window: Duration,
    warmup: Duration,
    connections: usize,
    round_trips: usize,
}

/// Runs the local-delivery benchmark; prints each window, the summary and the latencies as JSON lines.
fn local_bench(run: &LocalRun, dataplane: &std::path::Path) -> Result<(), String> {
    if !dataplane.is_file() {
        return Err(format!("{}: not found (build it: cargo build --release -p palisade-dataplane)", dataplane.display()));
    }
    let rig = HostRig::up(&palisade_lab::unique_name("lb")).map_err(|e| format!("lab: {e}"))?;
    let mut windows: Vec<(LocalPath, Traffic, LocalWindow)> = Vec::new();
    for round in 0..run.rounds {
        for &traffic in &run.traffic {
            for &path in &run.paths {
                let w = rig
                    .measure(path, traffic, dataplane, run.warmup, run.window)
                    .map_err(|e| format!("{} / {}: {e}", path.name(), traffic.name()))?;
                println!(
                    "{}",
                    json!({"scenario": "local-window", "round": round, "path": path.name(), "traffic": traffic.name(),
                           "offered_pps": w.offered_pps.round(), "delivered_pps": w.delivered_pps.round(),
                           "cpu_ns_per_packet": (w.cpu_ns_per_packet * 10.0).round() / 10.0})
                );
                windows.push((path, traffic, w));
            }
        }
    }
    for &traffic in &run.traffic {
        let median_of = |path: LocalPath, f: fn(&LocalWindow) -> f64| {
            let mut v: Vec<f64> = windows.iter().filter(|(p, t, _)| *p == path && *t == traffic).map(|(_, _, w)| f(w)).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let base = |p: LocalPath| if run.paths.contains(&p) { median_of(p, |w| w.delivered_pps).0 } else { f64::NAN };
        let (kernel, nft) = (base(LocalPath::Kernel), base(LocalPath::Nft));
        for &path in &run.paths {
            let (pps, min, max) = median_of(path, |w| w.delivered_pps);
            println!(
                "{}",
                json!({"scenario": "local", "path": path.name(), "traffic": traffic.name(),
                       "delivered_pps": pps.round(), "min_pps": min.round(), "max_pps": max.round(),
                       "cpu_ns_per_packet": (median_of(path, |w| w.cpu_ns_per_packet).0 * 10.0).round() / 10.0,
                       "vs_kernel": (pps / kernel * 1000.0).round() / 1000.0, "vs_nft": (pps / nft * 1000.0).round() / 1000.0,
                       "machine": machine(), "rounds": run.rounds, "window_ms": run.window.as_millis() as u64})
            );
        }
    }
    for &path in &run.paths {
        let l = rig.latency(path, dataplane, run.connections, run.round_trips).map_err(|e| format!("{} latency: {e}", path.name()))?;
        let r = |x: f64| (x * 10.0).round() / 10.0;
        println!(
            "{}",
            json!({"scenario": "local-latency", "path": path.name(), "connections": run.connections, "round_trips": run.round_trips,
                   "connect_p50_us": r(l.connect_p50_us), "connect_p99_us": r(l.connect_p99_us),
                   "rtt_p50_us": r(l.rtt_p50_us), "rtt_p99_us": r(l.rtt_p99_us), "machine": machine()})
        );
    }
    Ok(())
}

/// Runs the control-plane benchmark; prints JSON lines.
fn sync_bench(bin: &std::path::Path, rules: usize, changes: usize, agents: usize, pods: usize, policies: usize) -> Result<(), String> {
    let rig = SyncRig::up("psync", &bin.join("palisade-control"))?;
    let adds = (changes / 5).max(5);
    let timed = rig.change_to_enforced(&bin.join("palisade-dataplane"), rules, changes, adds)?;
    let sorted = |changes: &[palisade_bench::sync::Change], f: fn(&palisade_bench::sync::Change) -> Duration| {
        let mut v: Vec<Duration> = changes.iter().map(f).collect();
        v.sort();
        v
    };
    let pct = |v: &[Duration], p: f64| (v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e4).round() / 10.0;
    let (times, applied) = (sorted(&timed.edits, |c| c.enforced), sorted(&timed.edits, |c| c.applied));
    let added = sorted(&timed.adds, |c| c.enforced);
    println!(
        "{}",
        json!({"scenario": "sync-change-to-enforced", "rules": rules, "changes": changes, "p50_ms": pct(&times, 0.5), "p99_ms": pct(&times, 0.99),
               "max_ms": pct(&times, 1.0), "apply_call_p50_ms": pct(&applied, 0.5), "apply_call_p99_ms": pct(&applied, 0.99),
               "new_policies": adds, "new_policy_p50_ms": pct(&added, 0.5), "new_policy_p99_ms": pct(&added, 0.99), "machine": machine()})
    );
    drop(rig);
    if agents == 0 {
        return Ok(());
    }
    let rig = SyncRig::up("psync", &bin.join("palisade-control"))?;
    let f = rig.fan_out(agents, pods, policies)?;
    let r = |x: f64| (x * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({"scenario": "sync-fan-out", "agents": agents, "pods": pods, "policies": policies, "state_bytes": f.state_bytes,
               "initial_sync_ms": r(f.initial_sync_ms), "delta_p50_ms": r(f.delta_p50_ms), "delta_p99_ms": r(f.delta_p99_ms),
               "delta_max_ms": r(f.delta_max_ms), "server_rss_mib": r(f.server_rss_mib),
               "pod_change_ms": r(f.pod_change_ms), "pod_change_agents": f.pod_change_agents, "machine": machine()})
    );
    Ok(())
}

fn fail(msg: &str) -> ! {
    eprintln!("palisade-bench: {msg}");
    std::process::exit(2)
}

struct Params {
    packets: usize,
    baseline_packets: usize,
    seed: u64,
}

/// Facts about the machine, recorded with every result.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel, "threads_used": 1})
}

fn ns_per(d: Duration, n: usize) -> f64 {
    (d.as_nanos() as f64 / n as f64 * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Median over `reps` timings of `f`, which processes `n` items.
fn time_ns(reps: usize, n: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            ns_per(t.elapsed(), n)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn classbench_scenario(name: &str, filters: &[Filter], p: &Params) -> Vec<Value> {
    let rules: Vec<TreeRule<u32>> = filters.iter().enumerate().map(|(i, f)| f.to_rule(i as u32 * 1024)).collect();
    let t = Instant::now();
    let tree = TreeClassifier::build(rules.clone(), &[]);
    let tree_build = t.elapsed();
    let t = Instant::now();
    let tss = tss::TupleSpace::build(filters);
    let tss_build = t.elapsed();
    let linear = LinearClassifier::build(rules.clone());
    let mut out = Vec::new();
    for (trace_name, trace) in
        [("in-rules", classbench::trace_in_rules(filters, p.packets, p.seed + 1)), ("uniform", classbench::trace_uniform(p.packets, p.seed + 2))]
    {
        // The three must agree on every packet the baselines see.
        let nb = p.baseline_packets.min(trace.len());
        for k in &trace[..nb] {
            let want = linear.lookup(k, 0, |_| true);
            assert_eq!(tree.lookup(k, 0, |_| true), want, "tree disagrees with the linear scan on {k:?}");
            assert_eq!(tss.lookup(k).map(|i| i * 1024), want, "tuple-space search disagrees on {k:?}");
        }
        let tree_ns = time_ns(5, trace.len(), || {
            for k in &trace {
                black_box(tree.lookup(black_box(k), 0, |_| true));
            }
        });
        let mut batch_out = vec![None; 32];
        let tree_batched_ns = time_ns(5, trace.len(), || {
            for chunk in trace.chunks(32) {
                let out = &mut batch_out[..chunk.len()];
                tree.lookup_batch(black_box(chunk), 0, out, |_, _| true);
                black_box(&out);
            }
        });
        let tss_ns = time_ns(5, trace.len(), || {
            for k in &trace {
                black_box(tss.lookup(black_box(k)));
            }
        });
        let linear_ns = time_ns(3, nb, || {
            for k in &trace[..nb] {
                black_box(linear.lookup(black_box(k), 0, |_| true));
            }
        });
        let mut v = json!({
            "scenario": "classbench", "set": name, "rules": filters.len(), "trace": trace_name, "packets": trace.len(),
            "tree": {"ns_per_lookup": tree_ns, "ns_per_lookup_batched": tree_batched_ns, "build_ms": ms(tree_build), "memory_bytes": tree.memory_bytes(), "shape": tree.shape()},
            "tss": {"ns_per_lookup": tss_ns, "build_ms": ms(tss_build), "memory_bytes": tss.memory_bytes(), "tuples": tss.tuples()},
            "linear": {"ns_per_lookup": linear_ns, "packets": nb},
            "speedup_vs_tss": (tss_ns / tree_ns * 100.0).round() / 100.0,
            "speedup_vs_linear": (linear_ns / tree_ns * 10.0).round() / 10.0,
            "machine": machine(),
        });
        if trace_name == "in-rules" {
            v["tree"]["update"] = update_stats(&tree, &rules, &trace, p.seed);
        }
        out.push(v);
    }
    out
}

/// Times replacing one rule (a changed destination port, same priority), 500 times in a row
/// (a burst: background rebuilds start but cannot keep up); then lookups with the burst's
/// changes still in the overlay, and the wait for the rebuild to be taken in.
fn update_stats(tree: &TreeClassifier<u32>, rules: &[TreeRule<u32>], trace: &[[u32; 5]], seed: u64) -> Value {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 3);
    let mut cur = tree.clone();
    let mut times: Vec<f64> = Vec::new();
    for _ in 0..500 {
        let mut r = rules[rng.gen_range(0..rules.len())].clone();
        let port = rng.gen_range(1..65535u32);
        r.fields[4] = vec![(port, port)];
        let t = Instant::now();
        cur = cur.insert(r);
        times.push(t.elapsed().as_nanos() as f64 / 1000.0);
        black_box(&cur);
    }
    let sample = &trace[..trace.len().min(100_000)];
    let unsettled_ns = time_ns(3, sample.len(), || {
        for k in sample {
            black_box(cur.lookup(black_box(k), 0, |_| true));
        }
    });
    let t = Instant::now();
    black_box(cur.settled());
    let settle_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    json!({"updates": times.len(), "us_p50": r2(times[times.len() / 2]), "us_p99": r2(times[times.len() * 99 / 100]), "us_mean": r2(mean),
           "us_max": r2(times[times.len() - 1]), "ns_per_lookup_unsettled": unsettled_ns, "settle_ms": r2(settle_ms)})
}

fn k8s_scenario(policies: usize, p: &Params) -> Value {
    let g = k8s::generate(policies, p.packets.min(200_000), p.seed);
    let c = &g.cluster;
    // An agent compiles its own node's endpoints.
    let node = k8s::node_name(0);
    let t = Instant::now();
    let view = palisade_policy::calc::NodeView::compute(c, Some(&node));
    let view_time = t.elapsed();
    let mut compiler = Compiler::new();
    let programs = compiler.compile(&view);
    let compile = t.elapsed();
    let mut seen = std::collections::HashSet::new();
    let memory: usize = programs.values().filter(|p| seen.insert(std::sync::Arc::as_ptr(p))).map(|p| p.memory_bytes()).sum();
    let unique = seen.len();
    let entries: usize = programs.values().map(|p| p.len()).max().unwrap_or(0);
    // Per flow: the source's egress program and the destination's ingress program, where that
    // endpoint is on the node.
    let programs_ref = &programs;
    let by_ip: std::collections::HashMap<std::net::IpAddr, &palisade_policy::model::Endpoint> =
        c.endpoints.iter().flat_map(|e| e.ips.iter().map(move |n| (n.addr(), e))).collect();
    let by_ip = &by_ip;
    let lookups: Vec<_> = g
        .flows
        .iter()
        .flat_map(|f| {
            let e = by_ip.get(&f.src).map(|&ep| (ep, Direction::Egress));
            let i = by_ip.get(&f.dst).map(|&ep| (ep, Direction::Ingress));
            e.into_iter().chain(i).filter_map(move |(ep, d)| programs_ref.get(&(ep.name.clone(), d)).map(|prog| (&**prog, ep, d, f)))
        })
        .collect();
    let ev = Evaluator::new(c);
    let nb = p.baseline_packets.min(lookups.len());
    for (prog, ep, d, f) in &lookups[..nb.min(5000)] {
        assert_eq!(prog.classify(f).allowed, ev.direction(ep, *d, f, false).allowed, "compiled program disagrees with the evaluator on {f:?}");
    }
    let compiled_ns = time_ns(5, lookups.len(), || {
        for (prog, _, _, f) in &lookups {
            black_box(prog.classify(black_box(f)));
        }
    });
    let eval_ns = time_ns(3, nb, || {
        for (_, ep, d, f) in &lookups[..nb] {
            black_box(ev.direction(ep, *d, black_box(f), false));
        }
    });
    // One policy changes (its rules): recompile what depends on it.
    let changed = c.policies.iter().find(|p| p.name.contains("cnp")).or(c.policies.first()).map(|p| p.name.clone()).unwrap_or_default();
    let t = Instant::now();
    compiler.invalidate(std::slice::from_ref(&changed));
    black_box(compiler.compile(&view));
    let update = t.elapsed();
    json!({
        "scenario": "k8s", "policies": policies, "endpoints": c.endpoints.len(), "node_endpoints": programs.len() / 2, "programs": programs.len(), "unique_programs": unique,
        "max_entries_per_program": entries, "flows": g.flows.len(), "lookups": lookups.len(),
        "compiled": {"ns_per_lookup": compiled_ns, "compile_ms": ms(compile), "node_view_ms": ms(view_time), "memory_bytes": memory, "policy_update_ms": ms(update)},
        "evaluator": {"ns_per_lookup": eval_ns, "lookups": nb},
        "speedup_vs_evaluator": (eval_ns / compiled_ns * 10.0).round() / 10.0,
        "machine": machine(),
    })
}
