//! Object storage for build contexts: temporary per-organization credentials
//! (`GET /api/object-storage/push-access`) and a small S3-compatible HTTPS endpoint on its own
//! listener, where the Daytona SDKs upload `{org}/{hash}/context.tar`.
//!
//! The builder reads an uploaded context with [`ObjectStorage::context_tar`] (or
//! [`ObjectStore::context_tar`]), which answers a path under
//! `<data-dir>/objects/cove-builds/`.

pub mod body;
pub mod creds;
mod http;
mod multipart;
pub mod sigv4;
pub mod store;
pub mod xml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cove_types::ErrorKind;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;

pub use creds::{CredentialError, CredentialIssuer};
pub use store::{BUILD_BUCKET, ObjectStore};

/// The region clients sign for.
pub const REGION: &str = "us-east-1";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `StorageAccessDto`: what `GET /object-storage/push-access` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushAccess {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret: String,
    /// Session token.
    pub session_token: String,
    /// `https://host:port` of the S3 endpoint.
    pub storage_url: String,
    /// The caller's organization (keys go under `{organizationId}/`).
    pub organization_id: String,
    /// The bucket.
    pub bucket: String,
    /// The signing region.
    pub region: String,
}

/// How the object storage is set up.
#[derive(Debug, Clone)]
pub struct ObjectStorageConfig {
    /// Root of all state.
    pub data_dir: PathBuf,
    /// Where the HTTPS endpoint listens.
    pub listen: SocketAddr,
    /// The host clients use (from `--public-url`); the certificate names it.
    pub public_host: String,
    /// The staging ledger and limits multipart uploads obey (shared with the registry's
    /// uploads): idle ones are swept, and their parts count against the organization's limit.
    pub staging: crate::staging::Staging,
}

/// Why object storage could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStorageError {
    /// The credential secret could not be read or created.
    #[error("open object storage credentials")]
    Credentials(#[source] CredentialError),
    /// The object directory could not be prepared.
    #[error("open object store")]
    Store(#[source] store::ObjectError),
    /// The certificate could not be made or loaded.
    #[error("prepare the object storage certificate")]
    Tls(#[source] crate::tls::TlsError),
}

impl ObjectStorageError {
    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// The object storage service: issues credentials, serves the endpoint, finds contexts.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    endpoint: Arc<http::Endpoint>,
    storage_url: String,
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    ca: Arc<crate::tls::CaCertificate>,
}

impl ObjectStorage {
    /// Opens the store and credentials and prepares the certificate (CA and leaf under
    /// `<data-dir>/tls/`).
    pub fn open(cfg: &ObjectStorageConfig) -> Result<Self, ObjectStorageError> {
        let issuer =
            CredentialIssuer::open(&cfg.data_dir, creds::DEFAULT_TTL).map_err(ObjectStorageError::Credentials)?;
        let store = ObjectStore::open(&cfg.data_dir, cfg.staging.clone()).map_err(ObjectStorageError::Store)?;
        let tls = crate::tls::server_config(&cfg.data_dir, &certificate_names(&cfg.public_host, cfg.listen))
            .map_err(ObjectStorageError::Tls)?;
        let ca = crate::tls::ca_certificate(&cfg.data_dir).map_err(ObjectStorageError::Tls)?;
        let host =
            if cfg.public_host.contains(':') { format!("[{}]", cfg.public_host) } else { cfg.public_host.clone() };
        Ok(ObjectStorage {
            endpoint: Arc::new(http::Endpoint { issuer, store, bucket: BUILD_BUCKET.into(), region: REGION.into() }),
            storage_url: format!("https://{host}:{}", cfg.listen.port()),
            listen: cfg.listen,
            tls,
            ca: Arc::new(ca),
        })
    }

    /// Fresh credentials for `org_id`'s prefix.
    pub fn push_access(&self, org_id: &str) -> Result<PushAccess, CredentialError> {
        let c = self.endpoint.issuer.issue(org_id, chrono::Utc::now())?;
        tracing::debug!(org_id = %org_id, access_key_id = %c.access_key_id, expires_at = %c.expires_at, "issued object storage credentials");
        Ok(PushAccess {
            access_key: c.access_key_id,
            secret: c.secret_access_key,
            session_token: c.session_token,
            storage_url: self.storage_url.clone(),
            organization_id: c.org_id,
            bucket: self.endpoint.bucket.clone(),
            region: self.endpoint.region.clone(),
        })
    }

    /// The objects on disk.
    pub fn store(&self) -> &ObjectStore {
        &self.endpoint.store
    }

    /// The uploaded `context.tar` for a build's `contextHashes` entry, if present.
    pub fn context_tar(&self, org_id: &str, context_hash: &str) -> Option<PathBuf> {
        self.endpoint.store.context_tar(org_id, context_hash)
    }

    /// The CA the endpoint's certificate is signed by, for clients to pin.
    pub fn ca(&self) -> &crate::tls::CaCertificate {
        &self.ca
    }

    /// `https://host:port`, as handed to clients.
    pub fn storage_url(&self) -> &str {
        &self.storage_url
    }

    /// Binds the endpoint's listener.
    pub async fn bind(&self) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(self.listen).await
    }

    /// Serves HTTPS on `listener` until the task is dropped. Each connection gets its own
    /// task, so a slow handshake holds up nobody else.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let app = http::router(self.endpoint.clone());
        tracing::info!(addr = %self.listen, storage_url = %self.storage_url, "object storage listening");
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the object storage listener failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let svc = TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                if let Err(e) = conn {
                    tracing::debug!(peer = %peer, error = %e, "object storage connection ended with an error");
                }
            });
        }
    }
}

/// The names the endpoint's certificate must carry.
pub fn certificate_names(public_host: &str, listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let listen_ip = listen.ip();
    for n in [public_host.to_string(), if listen_ip.is_unspecified() { String::new() } else { listen_ip.to_string() }] {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The host part of a URL such as `http://cove.example:3000/x` (brackets of IPv6 removed).
pub fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map(|(_, a)| a).unwrap_or(authority);
    let host =
        if let Some(v6) = authority.strip_prefix('[') { v6.split(']').next()? } else { authority.split(':').next()? };
    (!host.is_empty()).then(|| host.to_string())
}

/// Paths a data directory's object storage uses (for the CLI and docs).
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.pem")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_host_is_taken_from_the_public_url() {
        assert_eq!(host_of_url("http://127.0.0.1:3000").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of_url("https://cove.example/api").as_deref(), Some("cove.example"));
        assert_eq!(host_of_url("http://[::1]:3000/").as_deref(), Some("::1"));
        assert_eq!(host_of_url("http://").as_deref(), None);
    }

    #[test]
    fn certificate_names_cover_localhost_loopback_and_the_public_host() {
        let listen: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        assert_eq!(certificate_names("cove.example", listen), ["localhost", "127.0.0.1", "cove.example"]);
        let listen: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        assert_eq!(certificate_names("127.0.0.1", listen), ["localhost", "127.0.0.1"]);
    }

    #[tokio::test]
    async fn push_access_hands_out_every_field_for_the_callers_organization() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ObjectStorageConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:9443".parse().unwrap(),
            public_host: "127.0.0.1".into(),
            staging: Default::default(),
        };
        let os = ObjectStorage::open(&cfg).unwrap();
        let a = serde_json::to_value(os.push_access("org-1").unwrap()).unwrap();
        for f in ["accessKey", "secret", "sessionToken", "storageUrl", "organizationId", "bucket", "region"] {
            assert!(a[f].as_str().is_some_and(|s| !s.is_empty()), "{f}");
        }
        assert_eq!(a["storageUrl"], "https://127.0.0.1:9443");
        assert_eq!(a["organizationId"], "org-1");
        assert_eq!(a["bucket"], BUILD_BUCKET);
    }
}
