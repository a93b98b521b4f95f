//! Mutual TLS between the control plane and its clients (agents, palisadectl), from a directory of
//! PEM files: `ca.pem`, `server.pem` + `server-key.pem` for palisade-control, `client.pem` +
//! `client-key.pem` for its clients. The server only accepts clients whose certificate the CA
//! signed; clients only trust a server the CA signed. [`generate`] makes such a directory.

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

/// Writes a new CA, a server certificate valid for `hosts` (names or addresses; localhost and
/// 127.0.0.1 are always included) and a client certificate into `dir`.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<(), String> {
    let e = |e: rcgen::Error| e.to_string();
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
    for ((cert_file, key_file), cn, sans, usage) in [
        (SERVER, "palisade-control", sans, ExtendedKeyUsagePurpose::ServerAuth),
        (CLIENT, "palisade-client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().map_err(e)?;
        let mut params = named(cn, sans)?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).map_err(e)?;
        files.push((cert_file.to_string(), cert.pem()));
        files.push((key_file.to_string(), key.serialize_pem()));
    }
    for (name, text) in files {
        std::fs::write(dir.join(&name), text).map_err(|err| format!("{}: {err}", dir.join(&name).display()))?;
    }
    Ok(())
}
