//! Reading manifests: YAML or JSON, multi-document files, `kind: List` (as `kubectl get -o yaml`
//! prints), and directories of such files.
//!
//! Every error names the file, the resource (kind and name, or the document number when the
//! resource has no usable identity yet) and the field path, e.g.
//! `policy.yaml: GlobalNetworkPolicy deny-all: spec.ingress[0].protocol: invalid type: ...`.

use crate::resources::*;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with input: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The file, when the input came from one.
    pub file: Option<PathBuf>,
    /// `Kind namespace/name`, or `document N` before the identity is known.
    pub resource: Option<String>,
    /// Dotted field path inside the resource, e.g. `spec.ingress[0].ports[1]`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Error {
    /// An error about a field of a resource.
    pub fn field(resource: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error { file: None, resource: Some(resource.into()), field: Some(field.into()), message: message.into() }
    }

    /// Attaches the file name if none is set yet.
    pub fn in_file(mut self, file: &Path) -> Error {
        self.file.get_or_insert_with(|| file.to_path_buf());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            if !field.is_empty() {
                write!(f, "{field}: ")?;
            }
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}

/// A resource and where it was read from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The resource.
    pub resource: Resource,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
}

const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every path: a file, or a directory whose `.yaml`/`.yml`/`.json` files (recursively, in
/// name order) are read. Returns all resources, or every error found (a bad document never
/// silently drops out).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Loaded>, Vec<Error>> {
    load_documents(paths).map(|docs| docs.into_iter().map(|(l, _)| l).collect())
}

/// [`load_paths`], keeping each resource's document.
pub fn load_documents<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<(Loaded, serde_json::Value)>, Vec<Error>> {
    // Unreadable paths are reported together with the errors of the files that were read.
    let (files, mut errors) = files_of(paths);
    let mut out = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_documents(&text) {
                Ok(rs) => out.extend(rs.into_iter().map(|(resource, doc)| (Loaded { resource, file: Some(file.clone()) }, doc))),
                Err(es) => errors.extend(es.into_iter().map(|e| e.in_file(&file))),
            },
            Err(e) => errors.push(Error { file: Some(file.clone()), resource: None, field: None, message: e.to_string() }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The manifest files of `paths`: files as given, directories' `.yaml`/`.yml`/`.json` files
/// (recursively, in name order).
pub fn manifest_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>, Vec<Error>> {
    match files_of(paths) {
        (files, errors) if errors.is_empty() => Ok(files),
        (_, errors) => Err(errors),
    }
}

/// The manifest files found under `paths`, and the errors of the paths that could not be read.
fn files_of<P: AsRef<Path>>(paths: &[P]) -> (Vec<PathBuf>, Vec<Error>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        collect_files(p.as_ref(), &mut files, &mut errors);
    }
    (files, errors)
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<Error>) {
    let io_err = |e: std::io::Error| Error { file: Some(path.to_path_buf()), resource: None, field: None, message: e.to_string() };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return errors.push(io_err(e)),
    };
    if !meta.is_dir() {
        files.push(path.to_path_buf());
        return;
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => return errors.push(io_err(e)),
    };
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect_files(&e, files, errors);
        } else if e.extension().and_then(|x| x.to_str()).is_some_and(|x| MANIFEST_EXTENSIONS.contains(&x)) {
            files.push(e);
        }
    }
}

/// Parses the text of one manifest file (YAML, which includes JSON; several documents allowed).
pub fn parse_str(text: &str) -> Result<Vec<Resource>, Vec<Error>> {
    parse_documents(text).map(|docs| docs.into_iter().map(|(r, _)| r).collect())
}

/// [`parse_str`], keeping each resource's document (Lists flattened into their items).
pub fn parse_documents(text: &str) -> Result<Vec<(Resource, serde_json::Value)>, Vec<Error>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let where_ = format!("document {}", i + 1);
        let value = match <serde_json::Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(Error { file: None, resource: Some(where_), field: None, message: format!("not valid YAML: {e}") });
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        collect_resources(value, &where_, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn collect_resources(value: serde_json::Value, where_: &str, out: &mut Vec<(Resource, serde_json::Value)>, errors: &mut Vec<Error>) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        match value.get("items").and_then(|i| i.as_array()) {
            Some(items) => {
                for (j, item) in items.iter().enumerate() {
                    collect_resources(item.clone(), &format!("{where_}, items[{j}]"), out, errors);
                }
            }
            None => errors.push(Error::field(where_, "items", "a List needs an items array")),
        }
        return;
    }
    match resource_from_value(value.clone(), where_) {
        Ok(r) => out.push((r, value)),
        Err(e) => errors.push(e),
    }
}

/// Turns one parsed document into a typed resource, checking `apiVersion`, `kind` and fields.
pub fn resource_from_value(value: serde_json::Value, where_: &str) -> Result<Resource, Error> {
    let obj = value.as_object().ok_or_else(|| Error {
        file: None,
        resource: Some(where_.to_string()),
        field: None,
        message: "expected a mapping with apiVersion, kind and metadata".into(),
    })?;
    let str_field = |name: &str| obj.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let api = str_field("apiVersion").ok_or_else(|| Error::field(where_, "apiVersion", "missing"))?;
    let kind = str_field("kind").ok_or_else(|| Error::field(where_, "kind", "missing"))?;
    let meta: Metadata = typed(obj.get("metadata").cloned().unwrap_or_default(), "metadata", where_)?;
    let id = if meta.name.is_empty() { where_.to_string() } else { format!("{kind} {}", qualified(&meta)) };
    if meta.name.is_empty() {
        return Err(Error::field(format!("{kind} ({where_})"), "metadata.name", "missing"));
    }
    let spec = obj.get("spec").cloned().unwrap_or_else(|| serde_json::json!({}));
    let calico = api == "projectcalico.org/v3";
    let r = match (api.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Resource::Namespace(meta),
        ("v1", "ServiceAccount") => Resource::ServiceAccount(meta),
        ("v1", "Pod") => {
            let status = obj.get("status").cloned().unwrap_or_else(|| serde_json::json!({}));
            Resource::Pod(meta, typed(spec, "spec", &id)?, typed(status, "status", &id)?)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => Resource::K8sNetworkPolicy(meta, typed(spec, "spec", &id)?),
        (_, "NetworkPolicy") if calico => Resource::NetworkPolicy(meta, typed(spec, "spec", &id)?),
        (_, "StagedKubernetesNetworkPolicy") if calico => Resource::StagedK8sNetworkPolicy(meta, typed(spec, "spec", &id)?),
        (_, "GlobalNetworkPolicy") if calico => Resource::GlobalNetworkPolicy(meta, typed(spec, "spec", &id)?),
        (_, "StagedNetworkPolicy") if calico => Resource::StagedNetworkPolicy(meta, typed(spec, "spec", &id)?),
        (_, "StagedGlobalNetworkPolicy") if calico => Resource::StagedGlobalNetworkPolicy(meta, typed(spec, "spec", &id)?),
        (_, "Tier") if calico => Resource::Tier(meta, typed(spec, "spec", &id)?),
        (_, "HostEndpoint") if calico => Resource::HostEndpoint(meta, typed(spec, "spec", &id)?),
        (_, "WorkloadEndpoint") if calico => Resource::WorkloadEndpoint(meta, typed(spec, "spec", &id)?),
        (_, "NetworkSet") if calico => Resource::NetworkSet(meta, typed(spec, "spec", &id)?),
        (_, "GlobalNetworkSet") if calico => Resource::GlobalNetworkSet(meta, typed(spec, "spec", &id)?),
        (_, "Profile") if calico => Resource::Profile(meta, typed(spec, "spec", &id)?),
        _ => {
            return Err(Error::field(
                id,
                "kind",
                format!(
                    "unsupported apiVersion/kind {api}/{kind} (supported: v1 Namespace, ServiceAccount, Pod; \
                     networking.k8s.io/v1 NetworkPolicy; projectcalico.org/v3 NetworkPolicy, GlobalNetworkPolicy, \
                     StagedNetworkPolicy, StagedGlobalNetworkPolicy, StagedKubernetesNetworkPolicy, Tier, HostEndpoint, WorkloadEndpoint, \
                     NetworkSet, GlobalNetworkSet, Profile)"
                ),
            ))
        }
    };
    Ok(r)
}

fn qualified(meta: &Metadata) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name),
        None => meta.name.clone(),
    }
}

/// Deserializes `value` as `T`, reporting the failing field's path under `root`.
fn typed<T: DeserializeOwned>(value: serde_json::Value, root: &str, resource: &str) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." || inner.is_empty() { root.to_string() } else { format!("{root}.{inner}") };
        Error::field(resource, field, e.into_inner().to_string())
    })
}

/// Path, modification time and size of every file and directory under some paths.
pub type Stamp = Vec<(PathBuf, Option<std::time::SystemTime>, u64)>;

/// The [`Stamp`] of the state paths: a change in any entry is a change of state. (Polling a
/// handful of files every 200 ms costs nothing and works on every filesystem.)
pub fn stamp<P: AsRef<Path>>(paths: &[P]) -> Stamp {
    let mut out = Vec::new();
    for p in paths {
        let mut stack = vec![p.as_ref().to_path_buf()];
        while let Some(p) = stack.pop() {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => {
                    if let Ok(rd) = std::fs::read_dir(&p) {
                        stack.extend(rd.flatten().map(|e| e.path()));
                    }
                    out.push((p, m.modified().ok(), 0));
                }
                Ok(m) => out.push((p, m.modified().ok(), m.len())),
                Err(_) => out.push((p, None, 0)),
            }
        }
    }
    out.sort();
    out
}
