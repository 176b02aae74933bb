//! A registry client for the OCI distribution API: manifests and blobs over HTTP(S), with
//! anonymous, basic and bearer-token auth, mirrors tried before the registry itself (like
//! containerd's `hosts.toml`), and blobs streamed to the content store, never held whole
//! in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cove_types::{Digest, ImageRef};

use crate::content::{ContentError, ContentStore, sha256};
use crate::oci::{Descriptor, MANIFEST_ACCEPT};

/// Where Docker Hub's registry API really lives.
const DOCKER_HUB_API: &str = "https://registry-1.docker.io";
/// How many times one blob download that broke off after making progress is resumed.
pub const MAX_RESUMES: u32 = 5;

/// Which hosts are mirrored and which may use plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registry host → mirror base URLs, tried in order before the host itself.
    pub mirrors: HashMap<String, Vec<String>>,
    /// `host:port`s that are reached over plain HTTP.
    pub insecure: HashSet<String>,
}

/// A user name and password (or token) for a registry.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// One place an image can be fetched from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL without `/v2`, e.g. `http://127.0.0.1:5000`.
    pub base: String,
    /// A mirror rather than the registry itself.
    pub mirror: bool,
}

/// A manifest or index as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The raw bytes (their sha256 is the digest).
    pub bytes: Vec<u8>,
    /// `Content-Type` of the answer.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// A failed registry operation.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    /// TCP/TLS/HTTP-level failure.
    #[error("cannot reach {base}: {reason}")]
    Connect {
        /// Endpoint.
        base: String,
        /// The transport error, flattened to text with its causes.
        reason: String,
    },
    /// 404 / MANIFEST_UNKNOWN / NAME_UNKNOWN.
    #[error("{what} not found on {base}")]
    NotFound {
        /// Endpoint.
        base: String,
        /// `manifest repo:ref` or `blob digest`.
        what: String,
    },
    /// 401/403 after trying the credentials we have.
    #[error("{base} refused access to {repository} ({detail})")]
    Unauthorized {
        /// Endpoint.
        base: String,
        /// Repository.
        repository: String,
        /// Whether credentials were sent, and the registry's message.
        detail: String,
    },
    /// Any other unexpected status.
    #[error("{base} answered {status} for {url}: {body}")]
    Status {
        /// Endpoint.
        base: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The stream broke mid-blob.
    #[error("download of {digest} from {base} broke off: {reason}")]
    Stream {
        /// Endpoint.
        base: String,
        /// Blob.
        digest: Digest,
        /// Cause.
        reason: String,
    },
    /// Storing the blob failed (including digest mismatch).
    #[error("store blob from {base}")]
    Store {
        /// Endpoint.
        base: String,
        /// Cause.
        #[source]
        source: ContentError,
    },
    /// The manifest's bytes do not hash to the digest asked for.
    #[error("manifest from {base} does not match digest {expected} (got {actual})")]
    ManifestDigest {
        /// Endpoint.
        base: String,
        /// Asked for.
        expected: Digest,
        /// Received.
        actual: Digest,
    },
}

impl DistributionError {
    /// Coarse class, for choosing which of several attempts' errors to report first.
    pub fn kind(&self) -> cove_types::ErrorKind {
        use cove_types::ErrorKind as K;
        match self {
            Self::Connect { .. } | Self::Stream { .. } => K::Unavailable,
            Self::NotFound { .. } => K::NotFound,
            Self::Unauthorized { .. } => K::Unauthenticated,
            Self::Status { .. } | Self::ManifestDigest { .. } => K::InvalidArgument,
            Self::Store { .. } => K::Internal,
        }
    }
}

/// HTTP client for registries, with a per-(endpoint, repository, credentials) token cache.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
    /// (endpoint, repository, sha256 of the credentials or "") → `Authorization` value. The
    /// credentials are part of the key so that a token obtained with one organization's
    /// credentials is never reused for a pull with other (or no) credentials.
    tokens: Mutex<HashMap<(String, String, String), String>>,
}

enum Auth {
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    Basic,
}

impl RegistryClient {
    /// A client with the given mirrors and insecure hosts.
    pub fn new(config: RegistryConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("cove/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend is compiled in, so building a client cannot fail");
        RegistryClient { http, config, tokens: Mutex::new(HashMap::new()) }
    }

    /// Where to look for `r`, in order: its mirrors, then the registry itself.
    pub fn endpoints(&self, r: &ImageRef) -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = self
            .config
            .mirrors
            .get(&r.registry)
            .into_iter()
            .flatten()
            .map(|m| Endpoint { base: m.trim_end_matches('/').to_string(), mirror: true })
            .collect();
        let base = if r.registry == cove_types::reference::DOCKER_HUB {
            DOCKER_HUB_API.to_string()
        } else if self.config.insecure.contains(&r.registry) {
            format!("http://{}", r.registry)
        } else {
            format!("https://{}", r.registry)
        };
        v.push(Endpoint { base, mirror: false });
        v
    }

    /// Fetches a manifest or index by tag or digest, verifying the digest when one is given.
    pub async fn manifest(
        &self,
        ep: &Endpoint,
        repository: &str,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<FetchedManifest, DistributionError> {
        let url = format!("{}/v2/{}/manifests/{}", ep.base, repository, reference);
        let resp = self.get(ep, repository, &url, Some(MANIFEST_ACCEPT), None, creds).await?;
        let resp = check(ep, &url, resp, || format!("manifest {repository}:{reference}")).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let bytes = resp.bytes().await.map_err(|e| connect(ep, &e))?.to_vec();
        let digest = sha256(&bytes);
        if let Ok(expected) = reference.parse::<Digest>()
            && expected.algorithm() == "sha256"
            && expected != digest
        {
            return Err(DistributionError::ManifestDigest { base: ep.base.clone(), expected, actual: digest });
        }
        Ok(FetchedManifest { bytes, media_type, digest })
    }

    /// Streams a blob into the content store, verifying digest and size. Returns at once when
    /// the blob is already stored. A download that breaks off after making progress is
    /// resumed with a `Range` request from the bytes already written (up to
    /// [`MAX_RESUMES`] times); a registry that answers the whole blob (200) instead starts
    /// it afresh. The digest is checked over the whole blob at the end either way.
    pub async fn fetch_blob(
        &self,
        ep: &Endpoint,
        repository: &str,
        desc: &Descriptor,
        digest: &Digest,
        creds: Option<&Credentials>,
        store: &ContentStore,
    ) -> Result<(), DistributionError> {
        if store.contains(digest) {
            return Ok(());
        }
        let url = format!("{}/v2/{}/blobs/{}", ep.base, repository, digest);
        let store_err = |source| DistributionError::Store { base: ep.base.clone(), source };
        // Only the expected digest's algorithm is hashed (sha512 too would halve the speed).
        let mut ingest = store.ingest_for(digest).map_err(store_err)?;
        let mut resumes = 0;
        loop {
            let from = ingest.size();
            if from > 0 && desc.size > 0 && from >= desc.size {
                // Everything arrived before the connection failed; the commit checks it.
                break;
            }
            let range = (from > 0).then(|| format!("bytes={from}-"));
            let resp = self.get(ep, repository, &url, None, range.as_deref(), creds).await?;
            let mut resp = check(ep, &url, resp, || format!("blob {digest}")).await?;
            if from > 0 {
                let content_range = resp.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
                match resumed_at(resp.status().as_u16(), content_range) {
                    Some(start) if start == from => {
                        tracing::info!(digest = %digest, from, "download resumed");
                    }
                    other => {
                        // The whole blob (or another part of it) came back: start afresh.
                        tracing::info!(digest = %digest, from, status = resp.status().as_u16(), answered_from = ?other,
                            "the registry did not resume the download; fetching the whole blob");
                        ingest = store.ingest_for(digest).map_err(store_err)?;
                        if other != Some(0) {
                            resp = self.get(ep, repository, &url, None, None, creds).await?;
                            resp = check(ep, &url, resp, || format!("blob {digest}")).await?;
                        }
                    }
                }
            }
            let attempt_start = ingest.size();
            let broke = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => ingest.write(&chunk).map_err(store_err)?,
                    // A body that ends short of the declared size broke off too.
                    Ok(None) if desc.size > 0 && ingest.size() < desc.size => {
                        break Some(format!("the body ended after {} of {} bytes", ingest.size(), desc.size));
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(cove_types::error::chain(&e)),
                }
            };
            let Some(reason) = broke else { break };
            let progressed = ingest.size() > attempt_start;
            if !progressed || resumes >= MAX_RESUMES {
                return Err(DistributionError::Stream { base: ep.base.clone(), digest: digest.clone(), reason });
            }
            resumes += 1;
            tracing::warn!(digest = %digest, received = ingest.size(), resumes, reason = %reason,
                "blob download broke off; resuming");
        }
        let size = (desc.size > 0).then_some(desc.size);
        let digest2 = digest.clone();
        tokio::task::spawn_blocking(move || ingest.commit(&digest2, size))
            .await
            .expect("the commit task does not panic")
            .map_err(store_err)
    }

    async fn get(
        &self,
        ep: &Endpoint,
        repository: &str,
        url: &str,
        accept: Option<&str>,
        range: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<reqwest::Response, DistributionError> {
        let key = (ep.base.clone(), repository.to_string(), creds.map(fingerprint).unwrap_or_default());
        let cached = self.tokens.lock().expect("token cache lock is never poisoned").get(&key).cloned();
        let send = |auth: Option<String>| {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(r) = range {
                req = req.header(reqwest::header::RANGE, r);
            }
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req.send()
        };
        let first_auth = cached.clone().or_else(|| creds.map(basic));
        let resp = send(first_auth).await.map_err(|e| connect(ep, &e))?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge =
            resp.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(parse_challenge);
        let auth = match challenge {
            Some(Some(Auth::Bearer { realm, service, scope })) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
                let token = self.token(ep, &realm, service.as_deref(), &scope, creds).await?;
                let value = format!("Bearer {token}");
                self.tokens.lock().expect("token cache lock is never poisoned").insert(key, value.clone());
                value
            }
            Some(Some(Auth::Basic)) if creds.is_some() && cached.is_some() => creds.map(basic).unwrap_or_default(),
            _ => {
                let body = resp.text().await.unwrap_or_default();
                return Err(unauthorized(ep, repository, creds.is_some(), &body));
            }
        };
        let resp = send(Some(auth)).await.map_err(|e| connect(ep, &e))?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            let body = resp.text().await.unwrap_or_default();
            return Err(unauthorized(ep, repository, creds.is_some(), &body));
        }
        Ok(resp)
    }

    async fn token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, DistributionError> {
        let mut q = vec![("scope", scope)];
        if let Some(s) = service {
            q.push(("service", s));
        }
        let mut req = self.http.get(realm).query(&q);
        if let Some(c) = creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| connect(ep, &e))?;
        if !resp.status().is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(unauthorized(ep, scope, creds.is_some(), &body));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp.json().await.map_err(|e| connect(ep, &e))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| unauthorized(ep, scope, creds.is_some(), "token endpoint returned no token"))
    }
}

async fn check(
    ep: &Endpoint,
    url: &str,
    resp: reqwest::Response,
    what: impl Fn() -> String,
) -> Result<reqwest::Response, DistributionError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
    if status == reqwest::StatusCode::NOT_FOUND
        || body.contains("MANIFEST_UNKNOWN")
        || body.contains("NAME_UNKNOWN")
        || body.contains("BLOB_UNKNOWN")
    {
        return Err(DistributionError::NotFound { base: ep.base.clone(), what: what() });
    }
    Err(DistributionError::Status { base: ep.base.clone(), url: url.to_string(), status: status.as_u16(), body })
}

/// Where the body of an answer to a `Range` request starts: the first byte of a 206's
/// `Content-Range` (`bytes 100-199/200`), 0 for a 200 (the whole blob), `None` for an
/// answer that cannot be placed (a 206 without a usable `Content-Range`).
fn resumed_at(status: u16, content_range: Option<&str>) -> Option<u64> {
    match status {
        200 => Some(0),
        206 => {
            let spec = content_range?.trim().strip_prefix("bytes")?.trim_start();
            spec.split_once('-')?.0.trim().parse().ok()
        }
        _ => None,
    }
}

fn basic(c: &Credentials) -> String {
    format!("Basic {}", base64(format!("{}:{}", c.username, c.password).as_bytes()))
}

fn fingerprint(c: &Credentials) -> String {
    sha256(format!("{}\0{}", c.username, c.password).as_bytes()).to_string()
}

fn unauthorized(ep: &Endpoint, repository: &str, with_creds: bool, body: &str) -> DistributionError {
    let detail = if with_creds {
        "the stored credentials were rejected"
    } else {
        "authentication required and no credentials are configured for this registry"
    };
    let msg: String = body.chars().take(200).collect();
    let detail = if msg.trim().is_empty() { detail.to_string() } else { format!("{detail}: {}", msg.trim()) };
    DistributionError::Unauthorized { base: ep.base.clone(), repository: repository.to_string(), detail }
}

fn connect(ep: &Endpoint, e: &reqwest::Error) -> DistributionError {
    // reqwest's own message repeats the URL; the root cause is what a human needs.
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let reason = if std::ptr::addr_eq(root, e as &dyn std::error::Error) {
        format!("{what}: {e}")
    } else {
        format!("{what}: {root}")
    };
    DistributionError::Connect { base: ep.base.clone(), reason }
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(h: &str) -> Option<Auth> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Auth::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut s = rest;
    while let Some((k, v)) = s.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (&v[..end], &v[end..])
        };
        params.insert(k, val.to_string());
        s = tail;
    }
    Some(Auth::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_bearer_challenges_are_parsed() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#;
        match parse_challenge(h) {
            Some(Auth::Bearer { realm, service, scope }) => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
                assert_eq!(scope.as_deref(), Some("repository:library/python:pull"));
            }
            _ => panic!("not parsed as bearer"),
        }
        assert!(matches!(parse_challenge(r#"Basic realm="basic-realm""#), Some(Auth::Basic)));
    }

    #[test]
    fn basic_auth_is_standard_base64() {
        assert_eq!(base64(b"testuser:testpass"), "dGVzdHVzZXI6dGVzdHBhc3M=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn mirrors_come_before_the_registry_and_docker_hub_uses_its_api_host() {
        let mut cfg = RegistryConfig::default();
        cfg.mirrors.insert("docker.io".into(), vec!["http://127.0.0.1:5000/".into()]);
        cfg.insecure.insert("127.0.0.1:5001".into());
        let c = RegistryClient::new(cfg);
        let eps = c.endpoints(&ImageRef::parse("python:3.12").unwrap());
        let bases: Vec<_> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(bases, ["http://127.0.0.1:5000", "https://registry-1.docker.io"]);
        let eps = c.endpoints(&ImageRef::parse("127.0.0.1:5001/a/b:1").unwrap());
        assert_eq!(eps[0].base, "http://127.0.0.1:5001");
        let eps = c.endpoints(&ImageRef::parse("ghcr.io/a/b:1").unwrap());
        assert_eq!(eps[0].base, "https://ghcr.io");
    }

    #[test]
    fn a_range_answer_is_placed_by_its_content_range_and_a_200_starts_at_zero() {
        assert_eq!(resumed_at(206, Some("bytes 100-199/200")), Some(100));
        assert_eq!(resumed_at(206, Some("bytes 0-9/*")), Some(0));
        assert_eq!(resumed_at(200, None), Some(0));
        assert_eq!(resumed_at(206, None), None);
        assert_eq!(resumed_at(206, Some("items 1-2/3")), None);
        assert_eq!(resumed_at(204, Some("bytes 1-2/3")), None);
    }

    /// A one-blob registry on a loopback port: the first answer is cut after `cut` bytes;
    /// later ones honour `Range` when `ranges` is set, else send the whole blob. Returns its
    /// base URL and the `Range` header of every request (`None` where there was none).
    async fn flaky_registry(
        blob: Vec<u8>,
        cut: usize,
        ranges: bool,
    ) -> (String, std::sync::Arc<Mutex<Vec<Option<String>>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if conn.read(&mut b).await.unwrap() == 0 {
                        break;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let range = head.lines().find_map(|l| l.strip_prefix("range:").map(|r| r.trim().to_string()));
                let first = {
                    let mut v = log.lock().unwrap();
                    v.push(range.clone());
                    v.len() == 1
                };
                let from: usize = match (&range, ranges) {
                    (Some(r), true) => r.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap(),
                    _ => 0,
                };
                let body = &blob[from..];
                let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
                let mut reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                if from > 0 {
                    reply += &format!("Content-Range: bytes {from}-{}/{}\r\n", blob.len() - 1, blob.len());
                }
                reply += "\r\n";
                conn.write_all(reply.as_bytes()).await.unwrap();
                let send = if first { &body[..cut] } else { body };
                let _ = conn.write_all(send).await;
                let _ = conn.shutdown().await;
            }
        });
        (base, seen)
    }

    async fn fetch_from(base: String, blob: &[u8]) -> (tempfile::TempDir, ContentStore, Result<(), DistributionError>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = sha256(blob);
        let desc = Descriptor {
            media_type: String::new(),
            digest: digest.to_string(),
            size: blob.len() as u64,
            platform: None,
        };
        let ep = Endpoint { base, mirror: false };
        let r = RegistryClient::new(RegistryConfig::default()).fetch_blob(&ep, "r", &desc, &digest, None, &store).await;
        (dir, store, r)
    }

    #[tokio::test]
    async fn a_download_cut_mid_blob_resumes_from_the_bytes_it_has() {
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (base, seen) = flaky_registry(blob.clone(), 100_000, true).await;
        let (_d, store, r) = fetch_from(base, &blob).await;
        r.unwrap();
        assert_eq!(store.read(&sha256(&blob)).unwrap(), blob);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], None);
        let from: u64 = seen[1].as_deref().unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
        assert!(from > 0 && from <= 100_000, "{seen:?}");
    }

    #[tokio::test]
    async fn a_registry_that_ignores_range_sends_the_whole_blob_again_and_it_is_stored_once() {
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let (base, seen) = flaky_registry(blob.clone(), 100_000, false).await;
        let (_d, store, r) = fetch_from(base, &blob).await;
        r.unwrap();
        assert_eq!(store.read(&sha256(&blob)).unwrap(), blob, "not the first part twice");
        assert!(seen.lock().unwrap()[1].is_some(), "it asked for a range");
    }

    #[test]
    fn credentials_never_print_their_password() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
