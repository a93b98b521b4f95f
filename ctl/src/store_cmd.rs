//! `palisadectl apply`, `get` and `delete`: the habits of kubectl and calicoctl, against a
//! `palisade-control`; and `status`, what its agents report.

use palisade_control::proto::{ApplyRequest, DeleteRequest, GetRequest, Resource, StatusRequest};
use palisade_control::tls::Security;
use palisade_policy::load::{manifest_files, parse_documents};
use std::path::PathBuf;
use std::process::ExitCode;

/// How `get` prints.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GetOutput {
    /// KIND, NAMESPACE, NAME, REVISION.
    Table,
    /// The table with each resource's selector, order and tier where it has them.
    Wide,
    /// A `List` of the manifests, as YAML.
    Yaml,
    /// A `List` of the manifests, as JSON.
    Json,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

fn status_error(e: tonic::Status) -> String {
    e.message().to_string()
}

/// Applies every manifest file of `paths` (each file one change, refused whole if invalid).
pub fn apply(server: &str, security: &Security, paths: &[PathBuf]) -> Result<ExitCode, String> {
    let files = manifest_files(paths).map_err(|es| es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    runtime()?.block_on(async {
        let mut client = palisade_control::client::store(server, security).await?;
        for file in files {
            let manifests = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let source = file.display().to_string();
            let reply = client.apply(ApplyRequest { manifests, source }).await.map_err(status_error)?.into_inner();
            for r in reply.applied {
                println!("{} applied (revision {})", id(&r), reply.revision);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints the stored resources of `kind` (all kinds if empty), optionally one by name.
pub fn get(
    server: &str,
    security: &Security,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: GetOutput,
) -> Result<ExitCode, String> {
    let reply = runtime()?.block_on(async {
        let mut client = palisade_control::client::store(server, security).await?;
        let req =
            GetRequest { kind: kind.to_string(), name: name.unwrap_or_default().to_string(), namespace: namespace.unwrap_or_default().to_string() };
        client.get(req).await.map(|r| r.into_inner()).map_err(status_error)
    })?;
    let docs: Vec<serde_json::Value> = reply.resources.iter().map(|r| serde_json::from_str(&r.json).unwrap_or_default()).collect();
    match output {
        GetOutput::Json | GetOutput::Yaml => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
            let text = match output {
                GetOutput::Json => serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?,
                _ => serde_yaml_ng::to_string(&list).map_err(|e| e.to_string())?,
            };
            println!("{text}");
        }
        GetOutput::Table | GetOutput::Wide => {
            let wide = matches!(output, GetOutput::Wide);
            println!("{:<26} {:<16} {:<32} {:>8}{}", "KIND", "NAMESPACE", "NAME", "REVISION", if wide { "  DETAILS" } else { "" });
            for (r, doc) in reply.resources.iter().zip(&docs) {
                let details = if wide { format!("  {}", details(doc)) } else { String::new() };
                println!("{:<26} {:<16} {:<32} {:>8}{details}", r.kind, r.namespace, r.name, r.revision);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Selector, order and tier of a policy-like resource; labels of others.
fn details(doc: &serde_json::Value) -> String {
    let spec = &doc["spec"];
    let mut parts = Vec::new();
    for key in ["tier", "order", "selector", "interfaceName", "nets"] {
        if !spec[key].is_null() {
            parts.push(format!("{key}={}", spec[key]));
        }
    }
    if let Some(sel) = spec.get("podSelector") {
        parts.push(format!("podSelector={sel}"));
    }
    if parts.is_empty() {
        if let Some(labels) = doc["metadata"]["labels"].as_object() {
            parts.push(format!("labels={}", serde_json::Value::Object(labels.clone())));
        }
    }
    parts.join(" ")
}

/// Deletes `kind`/`name`, or every resource of the manifest files in `files`.
pub fn delete(
    server: &str,
    security: &Security,
    kind: Option<&str>,
    name: Option<&str>,
    namespace: Option<&str>,
    files: &[PathBuf],
) -> Result<ExitCode, String> {
    let mut targets: Vec<DeleteRequest> = Vec::new();
    if let (Some(k), Some(n)) = (kind, name) {
        targets.push(DeleteRequest { kind: k.to_string(), name: n.to_string(), namespace: namespace.unwrap_or_default().to_string() });
    }
    for file in manifest_files(files).map_err(|es| es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))? {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let docs = parse_documents(&text).map_err(|es| es.iter().map(|e| format!("{}: {e}", file.display())).collect::<Vec<_>>().join("\n"))?;
        for (r, _) in docs {
            let m = r.metadata();
            targets.push(DeleteRequest { kind: r.kind().to_string(), name: m.name.clone(), namespace: m.namespace.clone().unwrap_or_default() });
        }
    }
    if targets.is_empty() {
        return Err("delete needs KIND NAME or -f FILE".into());
    }
    runtime()?.block_on(async {
        let mut client = palisade_control::client::store(server, security).await?;
        for t in targets {
            let reply = client.delete(t).await.map_err(status_error)?.into_inner();
            for r in reply.deleted {
                println!("{} deleted (revision {})", id(&r), reply.revision);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn id(r: &Resource) -> String {
    if r.namespace.is_empty() {
        format!("{} {}", r.kind, r.name)
    } else {
        format!("{} {}/{}", r.kind, r.namespace, r.name)
    }
}

/// Prints what the agents of `node` (every node when `None`) last reported.
pub fn status(server: &str, security: &Security, node: Option<&str>) -> Result<ExitCode, String> {
    let reply = runtime()?.block_on(async {
        let mut client = palisade_control::client::store(server, security).await?;
        client.status(StatusRequest { node: node.unwrap_or_default().to_string() }).await.map(|r| r.into_inner()).map_err(status_error)
    })?;
    if reply.nodes.is_empty() {
        println!("no agent has reported{}", node.map(|n| format!(" for node {n}")).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<10} {:<8} {:<32} {:>9}", "NODE", "CONNECTED", "IN-SYNC", "LAST HEARTBEAT", "UPTIME");
    for n in &reply.nodes {
        println!("{:<20} {:<10} {:<8} {:<32} {:>8.0}s", n.node, n.connected, n.in_sync, n.last_heartbeat, n.uptime);
        for e in &n.endpoints {
            println!("  {:<9} {:<40} {}", e.kind, e.endpoint, e.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}
