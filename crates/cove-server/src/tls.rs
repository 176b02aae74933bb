//! The server's own certificate authority and the certificate of the object-storage endpoint.
//!
//! Layout:
//! ```text
//! <data-dir>/tls/
//!   ca.pem  ca.key (0600)            ECDSA P-256 CA, 10 years, made once
//!   server.pem  server.key (0600)    leaf signed by the CA for the endpoint's names
//!   server.json                      {sans, notAfter, ca}: when to issue the leaf again
//! ```
//! The Daytona Python SDK talks to object storage with rustls against the *system* roots only,
//! so `cove tls trust` installs `ca.pem` there ([`trust`]). The leaf is issued again when its
//! names change, when its CA changes, or a month before it expires.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use cove_types::ErrorKind;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Years the CA is valid.
const CA_YEARS: i32 = 10;
/// Days a leaf is valid.
const LEAF_DAYS: i64 = 365;
/// A leaf is issued again when it has fewer days left than this.
const LEAF_RENEW_DAYS: i64 = 30;

/// A failed certificate operation.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Key generation or certificate signing failed.
    #[error("{op}")]
    Generate {
        /// What was being generated.
        op: &'static str,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A stored PEM file does not parse.
    #[error("parse {path}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate or key.
    #[error("configure TLS with {path}")]
    Rustls {
        /// The certificate.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The system has no trust store layout we know.
    #[error("no Debian-style trust store ({0} is missing): install the CA certificate manually")]
    UnsupportedTrustStore(PathBuf),
    /// `update-ca-certificates` failed.
    #[error("run {command}: {detail}")]
    UpdateTrust {
        /// The command.
        command: String,
        /// Exit status and output.
        detail: String,
    },
}

impl TlsError {
    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TlsError::UnsupportedTrustStore(_) => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

/// The CA as stored.
#[derive(Debug, Clone)]
pub struct CaInfo {
    /// `<data-dir>/tls/ca.pem`.
    pub cert_path: PathBuf,
    /// Hex sha256 of the certificate's DER.
    pub fingerprint: String,
    /// Whether this call created it.
    pub created: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct LeafRecord {
    sans: Vec<String>,
    not_after: DateTime<Utc>,
    ca: String,
}

/// Where a system keeps its extra trust anchors and how it rebuilds its bundle.
#[derive(Debug, Clone)]
pub struct TrustStore {
    /// Directory of local anchors (`/usr/local/share/ca-certificates`).
    pub anchors_dir: PathBuf,
    /// The bundle rustls-based clients read (`/etc/ssl/certs/ca-certificates.crt`).
    pub bundle: PathBuf,
    /// The command that rebuilds the bundle.
    pub update_command: Vec<String>,
}

/// What [`trust`] or [`untrust`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustOutcome {
    /// The anchor was written and the bundle rebuilt.
    Installed(PathBuf),
    /// The anchor was already there and in the bundle.
    AlreadyTrusted(PathBuf),
    /// The anchor was removed and the bundle rebuilt.
    Removed(PathBuf),
    /// There was nothing to remove.
    NotTrusted(PathBuf),
}

impl TrustStore {
    /// Debian and Ubuntu: `ca-certificates`.
    pub fn debian() -> Self {
        TrustStore {
            anchors_dir: PathBuf::from("/usr/local/share/ca-certificates"),
            bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            update_command: vec!["update-ca-certificates".into()],
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io { op, path: path.to_path_buf(), source }
}

fn generate(op: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { op, source }
}

/// Writes `data` to `path` atomically with mode 0600 (temp file, fsync, rename).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, data, 0o600)
}

fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        cove_types::fs::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Sets the validity to whole days (rcgen takes dates) from `from` to `to`.
fn set_validity(p: &mut CertificateParams, from: DateTime<Utc>, to: DateTime<Utc>) {
    let day = |t: DateTime<Utc>| {
        let d = t.date_naive();
        rcgen::date_time_ymd(d.year(), u8::try_from(d.month()).unwrap_or(1), u8::try_from(d.day()).unwrap_or(1))
    };
    p.not_before = day(from);
    p.not_after = day(to);
}

/// The CA's subject: derived from its key, so the issuer can be rebuilt from `ca.key` alone.
fn ca_params(key: &KeyPair, now: DateTime<Utc>) -> CertificateParams {
    let id = hex::encode(&Sha256::digest(key.public_key_raw())[..4]);
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cove");
    dn.push(DnType::CommonName, format!("Cove local CA {id}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut p, now - chrono::Duration::days(1), now + chrono::Duration::days(i64::from(CA_YEARS) * 365 + 3));
    p
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// The CA certificate as handed to clients (`GET /api/object-storage/ca`), which pin it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificate {
    /// `ca.pem`, PEM.
    pub certificate: String,
    /// Hex sha256 of the certificate's DER (what `cove tls init` prints).
    pub sha256: String,
}

/// Reads the CA certificate (creating the CA unless it exists) for clients to pin.
pub fn ca_certificate(data_dir: &Path) -> Result<CaCertificate, TlsError> {
    let ca = ensure_ca(data_dir)?;
    let certificate = std::fs::read_to_string(&ca.cert_path).map_err(io("read", &ca.cert_path))?;
    Ok(CaCertificate { certificate, sha256: ca.fingerprint })
}

/// Hex sha256 of the DER of the first certificate in `pem` (the same form as [`CaInfo::fingerprint`]).
pub fn pem_fingerprint(pem: &[u8]) -> Result<String, rustls::pki_types::pem::Error> {
    Ok(fingerprint(&CertificateDer::from_pem_slice(pem)?))
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(path).map_err(|source| TlsError::Pem { path: path.to_path_buf(), source })
}

fn read_key(path: &Path) -> Result<KeyPair, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(io("read key", path))?;
    KeyPair::from_pem(&pem).map_err(generate("parse stored key"))
}

/// Normalizes rcgen's CRLF PEM to LF (what the trust-store tools expect).
fn lf(pem: String) -> String {
    pem.replace("\r\n", "\n")
}

/// Creates `<data-dir>/tls/ca.pem` and `ca.key` unless they exist.
pub fn ensure_ca(data_dir: &Path) -> Result<CaInfo, TlsError> {
    let dir = tls_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut created = false;
    if !(cert_path.is_file() && key_path.is_file()) {
        let key = KeyPair::generate().map_err(generate("generate CA key"))?;
        let mut params = ca_params(&key, Utc::now());
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(generate("sign CA certificate"))?;
        write_private(&key_path, lf(key.serialize_pem()).as_bytes()).map_err(io("write", &key_path))?;
        write_with_mode(&cert_path, lf(cert.pem()).as_bytes(), 0o644).map_err(io("write", &cert_path))?;
        tracing::info!(path = %cert_path.display(), "created the local certificate authority");
        created = true;
    }
    let der = read_cert(&cert_path)?;
    Ok(CaInfo { fingerprint: fingerprint(&der), cert_path, created })
}

/// Makes sure a leaf for exactly `sans` exists (issuing one when needed) and answers a rustls
/// configuration serving it, HTTP/1.1 only.
pub fn server_config(data_dir: &Path, sans: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let ca = ensure_ca(data_dir)?;
    let dir = tls_dir(data_dir);
    let (cert_path, key_path, record_path) = (dir.join("server.pem"), dir.join("server.key"), dir.join("server.json"));
    let now = Utc::now();
    let record: Option<LeafRecord> = std::fs::read(&record_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let fresh = record.as_ref().is_some_and(|r| {
        r.sans == sans && r.ca == ca.fingerprint && r.not_after - now > chrono::Duration::days(LEAF_RENEW_DAYS)
    }) && cert_path.is_file()
        && key_path.is_file();
    if !fresh {
        let ca_key = read_key(&dir.join("ca.key"))?;
        let issuer = Issuer::new(ca_params(&ca_key, now), ca_key);
        let key = KeyPair::generate().map_err(generate("generate server key"))?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(generate("server certificate names"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cove object storage");
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + chrono::Duration::days(LEAF_DAYS);
        set_validity(&mut params, now - chrono::Duration::days(1), not_after);
        let cert = params.signed_by(&key, &issuer).map_err(generate("sign server certificate"))?;
        write_private(&key_path, lf(key.serialize_pem()).as_bytes()).map_err(io("write", &key_path))?;
        write_with_mode(&cert_path, lf(cert.pem()).as_bytes(), 0o644).map_err(io("write", &cert_path))?;
        let rec = LeafRecord { sans: sans.to_vec(), not_after, ca: ca.fingerprint.clone() };
        write_with_mode(&record_path, &serde_json::to_vec_pretty(&rec).expect("record serializes"), 0o644)
            .map_err(io("write", &record_path))?;
        tracing::info!(path = %cert_path.display(), sans = ?sans, "issued the object storage certificate");
    }
    let chain = vec![read_cert(&cert_path)?, read_cert(&ca.cert_path)?];
    let key = read_key(&key_path)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { path: cert_path.clone(), source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls { path: cert_path.clone(), source })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn anchor_path(store: &TrustStore, ca: &CaInfo) -> PathBuf {
    store.anchors_dir.join(format!("cove-{}.crt", &ca.fingerprint[..16]))
}

fn bundle_has(bundle: &Path, der: &CertificateDer<'_>) -> bool {
    CertificateDer::pem_file_iter(bundle).is_ok_and(|mut it| it.any(|c| c.is_ok_and(|c| c.as_ref() == der.as_ref())))
}

fn run_update(store: &TrustStore) -> Result<(), TlsError> {
    let command = store.update_command.join(" ");
    let (prog, args) = store
        .update_command
        .split_first()
        .ok_or_else(|| TlsError::UpdateTrust { command: command.clone(), detail: "no command configured".into() })?;
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| TlsError::UpdateTrust { command: command.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let detail = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        return Err(TlsError::UpdateTrust { command, detail });
    }
    Ok(())
}

/// Installs the data directory's CA (creating it if needed) as a system trust anchor.
/// Idempotent: nothing is rewritten when the anchor is present and in the bundle.
pub fn trust(data_dir: &Path, store: &TrustStore) -> Result<TrustOutcome, TlsError> {
    if !store.anchors_dir.is_dir() {
        return Err(TlsError::UnsupportedTrustStore(store.anchors_dir.clone()));
    }
    let ca = ensure_ca(data_dir)?;
    let der = read_cert(&ca.cert_path)?;
    let dst = anchor_path(store, &ca);
    let pem = std::fs::read(&ca.cert_path).map_err(io("read", &ca.cert_path))?;
    let same = std::fs::read(&dst).is_ok_and(|existing| existing == pem);
    if same && bundle_has(&store.bundle, &der) {
        return Ok(TrustOutcome::AlreadyTrusted(dst));
    }
    write_with_mode(&dst, &pem, 0o644).map_err(io("write", &dst))?;
    run_update(store)?;
    Ok(TrustOutcome::Installed(dst))
}

/// Removes the data directory's CA from the system trust anchors.
pub fn untrust(data_dir: &Path, store: &TrustStore) -> Result<TrustOutcome, TlsError> {
    let cert_path = tls_dir(data_dir).join("ca.pem");
    let der = read_cert(&cert_path)?;
    let ca = CaInfo { fingerprint: fingerprint(&der), cert_path, created: false };
    let dst = anchor_path(store, &ca);
    match std::fs::remove_file(&dst) {
        Ok(()) => {
            run_update(store)?;
            Ok(TrustOutcome::Removed(dst))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustOutcome::NotTrusted(dst)),
        Err(e) => Err(io("remove", &dst)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    fn sans() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "cove.example".into()]
    }

    #[test]
    fn the_ca_and_leaf_are_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_ca(dir.path()).unwrap();
        assert!(first.created);
        server_config(dir.path(), &sans()).unwrap();
        for key in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join("tls").join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let leaf = std::fs::read(dir.path().join("tls/server.pem")).unwrap();
        server_config(dir.path(), &sans()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("tls/server.pem")).unwrap(), leaf, "same names: same leaf");
        let again = ensure_ca(dir.path()).unwrap();
        assert!(!again.created);
        assert_eq!(again.fingerprint, first.fingerprint);
        server_config(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert_ne!(std::fs::read(dir.path().join("tls/server.pem")).unwrap(), leaf, "new names: new leaf");
    }

    #[test]
    fn the_leaf_verifies_against_the_ca_for_each_name() {
        let dir = tempfile::tempdir().unwrap();
        server_config(dir.path(), &sans()).unwrap();
        let ca = read_cert(&dir.path().join("tls/ca.pem")).unwrap();
        let leaf = read_cert(&dir.path().join("tls/server.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1", "cove.example"] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(&leaf, &[], &sn, &[], now).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("other.example").unwrap();
        assert!(verifier.verify_server_cert(&leaf, &[], &other, &[], now).is_err());
    }

    #[test]
    fn trusting_twice_installs_once_and_untrust_removes_the_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let anchors = dir.path().join("anchors");
        std::fs::create_dir(&anchors).unwrap();
        let bundle = dir.path().join("bundle.crt");
        // The "update" command builds the bundle from the anchors, like update-ca-certificates.
        let script =
            format!("cat {}/*.crt > {} 2>/dev/null || : > {}", anchors.display(), bundle.display(), bundle.display());
        let store =
            TrustStore { anchors_dir: anchors.clone(), bundle, update_command: vec!["sh".into(), "-c".into(), script] };
        let data = dir.path().join("data");
        let TrustOutcome::Installed(p) = trust(&data, &store).unwrap() else { panic!("first trust installs") };
        assert!(p.file_name().unwrap().to_str().unwrap().starts_with("cove-"));
        assert_eq!(trust(&data, &store).unwrap(), TrustOutcome::AlreadyTrusted(p.clone()));
        assert_eq!(untrust(&data, &store).unwrap(), TrustOutcome::Removed(p.clone()));
        assert_eq!(untrust(&data, &store).unwrap(), TrustOutcome::NotTrusted(p));
    }
}
