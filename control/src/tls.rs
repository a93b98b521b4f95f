//! Mutual TLS between the control plane and its clients (agents, palisadectl), from a directory of
//! PEM files: `ca.pem`, `server.pem` + `server-key.pem` for palisade-control, `client.pem` +
//! `client-key.pem` for its clients. The server only accepts clients whose certificate the CA
//! signed; clients only trust a server the CA signed. [`generate`] makes such a directory, with
//! one sub-directory per node agent whose certificate names its node: [`peer`] tells the server
//! who a request comes from, and a node may only follow its own node's view.

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

const CA: &str = "ca.pem";
const SERVER: (&str, &str) = ("server.pem", "server-key.pem");
const CLIENT: (&str, &str) = ("client.pem", "client-key.pem");

/// How a client or the server talks.
#[derive(Clone, Debug)]
pub enum Security {
    /// Plain HTTP/2 (tests, or behind a trusted network).
    Plaintext,
    /// Mutual TLS with the PEM files of this directory.
    Tls(PathBuf),
}

fn read(dir: &Path, name: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

/// The server's TLS configuration: its identity, and the CA its clients must be signed by.
pub fn server_config(dir: &Path) -> Result<ServerTlsConfig, String> {
    let identity = Identity::from_pem(read(dir, SERVER.0)?, read(dir, SERVER.1)?);
    Ok(ServerTlsConfig::new().identity(identity).client_ca_root(Certificate::from_pem(read(dir, CA)?)))
}

/// A client's TLS configuration: the CA to trust, and its own identity.
pub fn client_config(dir: &Path) -> Result<ClientTlsConfig, String> {
    let identity = Identity::from_pem(read(dir, CLIENT.0)?, read(dir, CLIENT.1)?);
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(dir, CA)?)).identity(identity))
}

/// The common name of the administrators' client certificate (palisadectl): every service.
const ADMIN_CN: &str = "palisade-client";
/// The common name of a node agent's certificate is this and the node's name: it may only
/// subscribe to that node's view.
const NODE_CN_PREFIX: &str = "palisade-node:";

/// Who a request comes from, by the common name of its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No certificate: the server runs without TLS (tests, a trusted network).
    Plaintext,
    /// The administrators' certificate.
    Admin,
    /// A node agent's certificate, for this node.
    Node(String),
    /// A certificate the CA signed, with another common name.
    Other(String),
}

/// The peer of a request.
pub fn peer<T>(req: &tonic::Request<T>) -> Peer {
    let Some(certs) = req.peer_certs() else { return Peer::Plaintext };
    let cn = certs.first().and_then(|c| common_name(c.as_ref())).unwrap_or_default();
    if cn == ADMIN_CN {
        return Peer::Admin;
    }
    match cn.strip_prefix(NODE_CN_PREFIX) {
        Some(node) => Peer::Node(node.to_string()),
        None => Peer::Other(cn),
    }
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Writes a new CA, a server certificate valid for `hosts` (names or addresses; localhost and
/// 127.0.0.1 are always included) and the administrators' client certificate into `dir`; and for
/// each of `nodes`, a directory `nodes/NODE` with the CA and that node agent's certificate (which
/// only lets it follow its own node's view).
pub fn generate(dir: &Path, hosts: &[String], nodes: &[String]) -> Result<(), String> {
    let e = |e: rcgen::Error| e.to_string();
    if let Some(bad) = nodes.iter().find(|n| n.is_empty() || n.contains('/') || n.starts_with('.')) {
        return Err(format!("node name {bad:?}: not usable as a directory name"));
    }
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let named = |cn: &str, sans: Vec<String>| -> Result<CertificateParams, String> {
        let mut p = CertificateParams::new(sans).map_err(e)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        Ok(p)
    };
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = named("palisade CA", Vec::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    sans.extend(hosts.iter().cloned());
    let mut files = vec![(CA.to_string(), ca_cert.pem())];
    let mut identities = vec![
        (String::new(), SERVER, "palisade-control".to_string(), sans, ExtendedKeyUsagePurpose::ServerAuth),
        (String::new(), CLIENT, ADMIN_CN.to_string(), Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    ];
    for node in nodes {
        files.push((format!("nodes/{node}/{CA}"), ca_cert.pem()));
        identities.push((format!("nodes/{node}/"), CLIENT, format!("{NODE_CN_PREFIX}{node}"), Vec::new(), ExtendedKeyUsagePurpose::ClientAuth));
    }
    for (subdir, (cert_file, key_file), cn, sans, usage) in identities {
        let key = KeyPair::generate().map_err(e)?;
        let mut params = named(&cn, sans)?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).map_err(e)?;
        files.push((format!("{subdir}{cert_file}"), cert.pem()));
        files.push((format!("{subdir}{key_file}"), key.serialize_pem()));
    }
    for node in nodes {
        let d = dir.join("nodes").join(node);
        std::fs::create_dir_all(&d).map_err(|err| format!("{}: {err}", d.display()))?;
    }
    for (name, text) in files {
        std::fs::write(dir.join(&name), text).map_err(|err| format!("{}: {err}", dir.join(&name).display()))?;
    }
    Ok(())
}
