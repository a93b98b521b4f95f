//! A connectivity matrix through the real dataplane, like the Kubernetes network-policy e2e
//! suite: listeners in every pod on its container ports, a probe from every pod (and from an
//! external host) to every other pod on each of them.

use crate::{probe, Lab, LabSpec, Listeners, PodSpec, Protocol};
use palisade_policy::load::load_paths;
use palisade_policy::model::{Cluster, EndpointKind};
use palisade_policy::resources::Resource;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The source name of probes from the external namespace (a host beyond the uplink).
pub const EXTERNAL: &str = "external";

/// A pod to listen in and probe.
#[derive(Clone, Debug)]
pub struct Target {
    /// `namespace/name`.
    pub endpoint: String,
    /// The address probes go to (the pod's first address).
    pub ip: IpAddr,
    /// All its addresses.
    pub ips: Vec<IpAddr>,
    /// The ports it listens on.
    pub ports: Vec<(Protocol, u16)>,
}

/// One probe's result, as printed in JSON lines.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Outcome {
    /// Source pod (`namespace/name`) or `external`.
    pub from: String,
    /// Destination pod.
    pub to: String,
    /// Destination port (0 for ICMP).
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP` or `ICMP`.
    pub protocol: String,
    /// Whether the connection (or echo) succeeded.
    pub allowed: bool,
}

/// The workload endpoints of `cluster` with addresses, listening on their pods' declared
/// container ports (read from the manifests at `state`), or on `ports` when given.
pub fn targets(cluster: &Cluster, state: &[PathBuf], ports: Option<&[(Protocol, u16)]>) -> Result<Vec<Target>, String> {
    let mut declared: BTreeMap<String, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    let loaded = load_paths(state).map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    for l in loaded {
        if let Resource::Pod(meta, spec, _) = l.resource {
            let key = format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name);
            let set = declared.entry(key).or_default();
            for p in spec.containers.iter().flat_map(|c| &c.ports) {
                let proto = p.protocol.as_deref().unwrap_or("TCP").parse().map_err(|e| format!("pod {}: {e}", meta.name))?;
                set.insert((proto, u16::try_from(p.container_port).map_err(|_| format!("pod {}: bad containerPort", meta.name))?));
            }
        }
    }
    Ok(cluster
        .endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Workload && !e.ips.is_empty())
        .map(|e| Target {
            endpoint: e.name.clone(),
            ip: e.ips[0].addr(),
            ips: e.ips.iter().map(|n| n.addr()).collect(),
            ports: match ports {
                Some(p) => p.to_vec(),
                None => declared.get(&e.name).map(|s| s.iter().copied().collect()).unwrap_or_default(),
            },
        })
        .collect())
}

/// The lab that hosts these targets.
pub fn lab_spec(name: &str, queues: u32, targets: &[Target]) -> LabSpec {
    LabSpec { name: name.into(), queues, pods: targets.iter().map(|t| PodSpec { endpoint: t.endpoint.clone(), ips: t.ips.clone() }).collect() }
}

/// Starts listeners in every target pod; they stop when the returned guards drop.
pub fn listen(lab: &Lab, targets: &[Target]) -> Result<Vec<Listeners>, String> {
    targets
        .iter()
        .filter(|t| !t.ports.is_empty())
        .map(|t| {
            let ns = lab.pod_netns(&t.endpoint).ok_or_else(|| format!("pod {} is not in the lab", t.endpoint))?;
            Listeners::start(ns, &t.ports).map_err(|e| format!("listeners in {}: {e}", t.endpoint))
        })
        .collect()
}

/// Probes from every target (and from the external namespace when `external`) to every other
/// target on each of its ports, `parallel` at a time. Listeners must be running.
pub fn probe_all(lab: &Lab, targets: &[Target], external: bool, timeout: Duration, parallel: usize) -> Result<Vec<Outcome>, String> {
    let mut jobs = Vec::new();
    let sources: Vec<(String, String)> = targets
        .iter()
        .map(|t| (t.endpoint.clone(), lab.pod_netns(&t.endpoint).expect("targets are in the lab").to_string()))
        .chain(external.then(|| (EXTERNAL.to_string(), lab.ext_netns().to_string())))
        .collect();
    for (from, ns) in &sources {
        for t in targets.iter().filter(|t| &t.endpoint != from) {
            for &(protocol, port) in &t.ports {
                jobs.push((from.clone(), ns.clone(), t.endpoint.clone(), t.ip, protocol, port));
            }
        }
    }
    let jobs = Arc::new(Mutex::new(jobs));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (jobs, results) = (jobs.clone(), results.clone());
            std::thread::spawn(move || loop {
                let Some((from, ns, to, ip, protocol, port)) = jobs.lock().expect("jobs").pop() else { return };
                let r = probe(&ns, ip, protocol, port, timeout).map(|allowed| Outcome { from, to, port, protocol: protocol.to_string(), allowed });
                results.lock().expect("results").push(r.map_err(|e| e.to_string()));
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a probe thread panicked".to_string())?;
    }
    let mut out = Arc::try_unwrap(results).expect("threads joined").into_inner().expect("results").into_iter().collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// The outcomes as truth tables, one per protocol and port: rows are sources, columns
/// destinations, `.` connected and `X` blocked (the e2e suite's notation).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut by_port: BTreeMap<(String, u16), Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_port.entry((o.protocol.clone(), o.port)).or_default().push(o);
    }
    let mut s = String::new();
    for ((proto, port), os) in by_port {
        let froms: BTreeSet<&str> = os.iter().map(|o| o.from.as_str()).collect();
        let tos: BTreeSet<&str> = os.iter().map(|o| o.to.as_str()).collect();
        let w = froms.iter().map(|f| f.len()).max().unwrap_or(0).max(proto.len() + 6);
        s += &format!("{:w$}", format!("{proto}/{port}"));
        for t in &tos {
            s += &format!("  {t}");
        }
        s += "\n";
        for f in &froms {
            s += &format!("{f:w$}");
            for t in &tos {
                let cell = match os.iter().find(|o| o.from == *f && o.to == *t) {
                    Some(o) if o.allowed => ".",
                    Some(_) => "X",
                    None => "-",
                };
                s += &format!("  {cell:^len$}", len = t.len());
            }
            s += "\n";
        }
        s += "\n";
    }
    s
}
