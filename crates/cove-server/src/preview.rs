//! Preview URLs: HTTP and WebSocket traffic from outside to a port of a sandbox, proxied by
//! the server to the sandbox's bridge address.
//!
//! Contract:
//! * **What is reached.** `{port}-{sandboxId}.{domain}` and `/preview/{sandboxId}/{port}/…`
//!   reach `port` of that sandbox at `http://<sandbox ip>:<port>` (the path form without its
//!   prefix); `{port}-{signedToken}.{domain}` and `/preview/signed/{signedToken}/…` reach the
//!   sandbox and port the token was issued for (the host's port must be that one). Only a
//!   `started` sandbox is reached (503 otherwise); nothing answering is a 502 naming the port.
//! * **Who may.** Anyone, when the sandbox is public. For a private one, one of: its preview
//!   token (HMAC-SHA256 of the sandbox id under `preview.key`, never stored) in
//!   `X-Daytona-Preview-Token` or in the `DAYTONA_SANDBOX_AUTH_KEY` query parameter (how the
//!   TypeScript SDK authenticates browser WebSockets); an API key of the sandbox's
//!   organization as `Authorization: Bearer`; or a signed token that has not expired
//!   (stored as sha256, deleted when expired through the API or with the sandbox).
//!   Otherwise 401, saying what is missing.
//! * **What the sandbox sees.** Never the credentials above: the preview token header, the
//!   query parameter and an `Authorization` header holding a Cove API key are removed, as
//!   are hop-by-hop headers (RFC 9110 §7.6.1 and whatever `Connection` names) in both
//!   directions. `X-Forwarded-For`, `-Proto` and `-Host` are set by the proxy, replacing
//!   any the client sent; `Host` is the one the client used.
//! * Bodies stream both ways; a WebSocket (any `Upgrade`) is bridged byte for byte once both
//!   sides switched protocols.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use cove_runtime::Runtime;
use cove_types::{ErrorKind, SandboxState};
use hmac::Mac;
use sha2::Digest as _;

use crate::keyfile::KeyFileError;
use crate::service::keys::{KeyService, Principal};
use crate::service::now_millis;
use crate::store::{PreviewTokenRecord, SandboxRecord, Store, StoreError};

/// The header private previews are opened with.
pub const TOKEN_HEADER: &str = "x-daytona-preview-token";
/// The query parameter the TypeScript SDK puts the preview token in (browser WebSockets).
pub const TOKEN_QUERY: &str = "DAYTONA_SANDBOX_AUTH_KEY";
/// A signed URL lives this long unless the request says otherwise (the SDK's default).
pub const DEFAULT_SIGNED_SECS: i64 = 60;
/// The longest a signed URL may live.
pub const MAX_SIGNED_SECS: i64 = 24 * 3600;
/// Characters of a signed token (lowercase alphanumeric, about 206 bits).
const SIGNED_TOKEN_LEN: usize = 40;
/// Signed tokens are at least this long; anything shorter after `{port}-` is no token.
const MIN_SIGNED_TOKEN_LEN: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The HMAC label of per-sandbox tokens, so the key could sign other things later.
const TOKEN_LABEL: &[u8] = b"cove preview token\n";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A failed preview operation.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The preview key could not be read or made.
    #[error("load the preview key {path}: {why}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        why: String,
    },
    /// Not a port number.
    #[error("port must be an integer from 1 to 65535, not {0:?}")]
    BadPort(String),
    /// `expiresInSeconds` out of range.
    #[error("expiresInSeconds must be from 1 to {MAX_SIGNED_SECS} (24 hours), not {0}")]
    BadExpiry(i64),
    /// `isPublic` is not a boolean.
    #[error("isPublic must be true or false, not {0:?}")]
    BadPublic(String),
    /// A host name under the preview domain that names no sandbox or signed token.
    #[error(
        "{host} is not a preview host name: expected {{port}}-{{sandboxId}}.{domain} or {{port}}-{{signedToken}}.{domain}"
    )]
    BadHost {
        /// The Host header.
        host: String,
        /// The preview domain.
        domain: String,
    },
    /// No such sandbox (in the caller's organization, for the API).
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// Expiring a signed URL that does not exist (any more).
    #[error("no signed preview URL with that token for port {port} of sandbox {sandbox_id}")]
    NoSignedUrl {
        /// The sandbox.
        sandbox_id: String,
        /// The port.
        port: u16,
    },
    /// The request carries no credential that opens this private sandbox.
    #[error("{0}")]
    Unauthorized(String),
    /// Another change to the sandbox won the race.
    #[error("sandbox {0} changed while its public flag was written; try again")]
    Busy(String),
    /// The sandbox is not running.
    #[error("sandbox {id} is {state}; start it to reach port {port}")]
    NotStarted {
        /// The sandbox.
        id: String,
        /// Its state.
        state: SandboxState,
        /// The port asked for.
        port: u16,
    },
    /// Nothing accepts connections on the port.
    #[error("connect to port {port} of sandbox {id} ({addr})")]
    Connect {
        /// The sandbox.
        id: String,
        /// The port.
        port: u16,
        /// Where.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange with the sandbox's server failed.
    #[error("forward the request to port {port} of sandbox {id}")]
    Upstream {
        /// The sandbox.
        id: String,
        /// The port.
        port: u16,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The store failed.
    #[error("{op}")]
    Store {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// The random source failed.
    #[error("make a signed preview token: {0}")]
    Random(getrandom::Error),
}

impl PreviewError {
    /// The error class (for the API's envelope).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadPort(_) | Self::BadExpiry(_) | Self::BadPublic(_) | Self::BadHost { .. } => {
                ErrorKind::InvalidArgument
            }
            Self::NotFound(_) | Self::NoSignedUrl { .. } => ErrorKind::NotFound,
            Self::Unauthorized(_) => ErrorKind::Unauthenticated,
            Self::Busy(_) => ErrorKind::AlreadyExists,
            Self::NotStarted { .. } | Self::Connect { .. } | Self::Upstream { .. } => ErrorKind::Unavailable,
            Self::Key { .. } | Self::Store { .. } | Self::Random(_) => ErrorKind::Internal,
        }
    }

    /// The status the proxy answers with (plain text: the client is a browser or an app).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::NotStarted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) | Self::NoSignedUrl { .. } => StatusCode::NOT_FOUND,
            Self::BadPort(_) | Self::BadExpiry(_) | Self::BadPublic(_) | Self::BadHost { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Busy(_) => StatusCode::CONFLICT,
            Self::Key { .. } | Self::Store { .. } | Self::Random(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The proxy's answer: the status and the message with its causes, except for internal
    /// errors, which are logged.
    pub fn into_proxy_response(self) -> Response<Body> {
        let status = self.status();
        let text = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %cove_types::error::chain(&self), "preview proxy failed");
            "internal server error; see the server log".to_string()
        } else {
            cove_types::error::chain(&self)
        };
        let mut resp = Response::new(Body::from(format!("{text}\n")));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> PreviewError {
    move |source| PreviewError::Store { op, source }
}

/// `GET /sandbox/{id}/ports/{port}/preview-url`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPreviewUrl {
    /// The sandbox.
    pub sandbox_id: String,
    /// `{scheme}://{port}-{id}.{domain}`.
    pub url: String,
    /// The sandbox's preview token (`X-Daytona-Preview-Token`).
    pub token: String,
}

/// `GET /sandbox/{id}/ports/{port}/signed-preview-url`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPortPreviewUrl {
    /// The sandbox.
    pub sandbox_id: String,
    /// The port.
    pub port: u16,
    /// The signed token (also in the URL).
    pub token: String,
    /// `{scheme}://{port}-{token}.{domain}`.
    pub url: String,
}

/// What a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `{port}-{sandboxId}`.
    Sandbox {
        /// The sandbox id (lowercase).
        id: String,
        /// The port.
        port: u16,
    },
    /// `{port}-{token}` (`port` is `None` in the path form: the token's own).
    Signed {
        /// The token (lowercase).
        token: String,
        /// The port the host name asked for.
        port: Option<u16>,
    },
}

/// A request the proxy takes: whom it is for and the path and query to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Sandbox or signed token.
    pub target: Target,
    /// `/…[?…]` as the sandbox's server is to see it.
    pub path_and_query: String,
}

/// Parses a port as in a host name or path: 1..=65535, digits only.
pub fn parse_port(s: &str) -> Result<u16, PreviewError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(PreviewError::BadPort(s.to_string())),
    }
}

/// `{port}-{sandboxId}` or `{port}-{signedToken}`, lowercase.
fn parse_label(label: &str) -> Option<Result<Target, PreviewError>> {
    let (port, rest) = label.split_once('-')?;
    let port = match parse_port(port) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    if rest.len() == 36 && uuid::Uuid::try_parse(rest).is_ok() {
        return Some(Ok(Target::Sandbox { id: rest.to_string(), port }));
    }
    if rest.len() >= MIN_SIGNED_TOKEN_LEN && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Some(Ok(Target::Signed { token: rest.to_string(), port: Some(port) }));
    }
    None
}

/// What a `Host` header names under `domain` (`host[:port]`, lowercase): `None` when it is
/// not a preview host name (the API's own, or another), an error when it is one that names
/// nothing (a bad port, a malformed id). Host names compare case-insensitively; when the
/// domain has no port, the host's port is ignored.
pub fn parse_host(host: &str, domain: &str) -> Option<Result<Target, PreviewError>> {
    let lower = host.trim().to_ascii_lowercase();
    let name = if domain.contains(':') { lower.as_str() } else { strip_port(&lower) };
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    if label.is_empty() || label.contains('.') {
        return None;
    }
    Some(
        parse_label(label)
            .unwrap_or_else(|| Err(PreviewError::BadHost { host: host.to_string(), domain: domain.to_string() })),
    )
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// The path form: `/preview/{sandboxId}/{port}/{rest}` or `/preview/signed/{token}/{rest}`;
/// `None` for other paths.
pub fn parse_path(path: &str, query: Option<&str>) -> Option<Result<Route, PreviewError>> {
    let tail = path.strip_prefix("/preview/")?;
    let (first, tail) = tail.split_once('/').unwrap_or((tail, ""));
    let (second, rest) = tail.split_once('/').unwrap_or((tail, ""));
    let target = if first == "signed" {
        let token = second.to_ascii_lowercase();
        if token.len() < MIN_SIGNED_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Some(Err(PreviewError::Unauthorized(
                "this signed preview URL has expired or was never issued".into(),
            )));
        }
        Target::Signed { token, port: None }
    } else {
        let id = first.to_ascii_lowercase();
        if uuid::Uuid::try_parse(&id).is_err() || id.len() != 36 {
            return Some(Err(PreviewError::NotFound(first.to_string())));
        }
        match parse_port(second) {
            Ok(port) => Target::Sandbox { id, port },
            Err(e) => return Some(Err(e)),
        }
    };
    Some(Ok(Route { target, path_and_query: with_query(&format!("/{rest}"), query) }))
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

/// Removes `DAYTONA_SANDBOX_AUTH_KEY` from a query; returns the rest and its value.
fn take_query_token(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(q) = query else { return (None, None) };
    let mut token = None;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == TOKEN_QUERY => {
                token = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    let rest = kept.join("&");
    ((!rest.is_empty()).then_some(rest), token)
}

/// Headers that concern one connection only (RFC 9110 §7.6.1), plus the obsolete
/// `Proxy-Connection`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers and every header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Where preview URLs live and how they are written.
#[derive(Debug, Clone)]
pub struct PreviewConfig {
    /// `host[:port]` under which `{port}-{id}` names are served (`localhost:{api port}`
    /// unless `--preview-domain` says otherwise).
    pub domain: String,
    /// `http` or `https`: the scheme of the server's public URL.
    pub scheme: String,
}

/// Preview links, signed URLs, the public flag and the proxy.
#[derive(Clone)]
pub struct PreviewService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    keys: KeyService,
    key: [u8; 32],
    domain: String,
    scheme: String,
}

impl std::fmt::Debug for PreviewService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviewService")
            .field("domain", &self.inner.domain)
            .field("scheme", &self.inner.scheme)
            .finish_non_exhaustive()
    }
}

/// The per-sandbox preview token: HMAC-SHA256 of the id under `key`, lowercase hex.
pub fn sandbox_token(key: &[u8; 32], sandbox_id: &str) -> String {
    hex::encode(token_mac(key, sandbox_id).finalize().into_bytes())
}

/// Whether `presented` is the sandbox's preview token, compared in constant time.
pub fn token_matches(key: &[u8; 32], sandbox_id: &str, presented: &str) -> bool {
    match hex::decode(presented.trim()) {
        Ok(bytes) => token_mac(key, sandbox_id).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

fn token_mac(key: &[u8; 32], sandbox_id: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(TOKEN_LABEL);
    mac.update(sandbox_id.as_bytes());
    mac
}

fn signed_token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn new_signed_token() -> Result<String, PreviewError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(SIGNED_TOKEN_LEN);
    while out.len() < SIGNED_TOKEN_LEN {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).map_err(PreviewError::Random)?;
        // 252 = 7 × 36: rejecting the rest keeps every character equally likely.
        for b in buf.into_iter().filter(|b| *b < 252) {
            if out.len() < SIGNED_TOKEN_LEN {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Ok(out)
}

/// Who a proxied request is, once authenticated, and where it goes.
struct Upstream {
    sandbox_id: String,
    ip: Ipv4Addr,
    port: u16,
}

impl PreviewService {
    /// Opens the service; the key file `preview.key` is made on first start.
    pub fn open(
        store: Arc<dyn Store>,
        runtime: Arc<Runtime>,
        keys: KeyService,
        data_dir: &std::path::Path,
        cfg: PreviewConfig,
    ) -> Result<Self, PreviewError> {
        let path = data_dir.join("preview.key");
        let key = crate::keyfile::load_or_create(&path, "the preview token key").map_err(|e| {
            let why = match e {
                KeyFileError::Read(_, e) | KeyFileError::Write(_, e) => e.to_string(),
                KeyFileError::Random(e) => e.to_string(),
            };
            PreviewError::Key { path: path.display().to_string(), why }
        })?;
        let domain = cfg.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        Ok(PreviewService { inner: Arc::new(Inner { store, runtime, keys, key, domain, scheme: cfg.scheme }) })
    }

    /// The domain preview host names end in.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    async fn find(&self, who: &Principal, id_or_name: &str) -> Result<SandboxRecord, PreviewError> {
        self.inner
            .store
            .get_sandbox(&who.org_id, id_or_name)
            .await
            .map_err(store("get sandbox"))?
            .ok_or_else(|| PreviewError::NotFound(id_or_name.to_string()))
    }

    fn url(&self, port: u16, name: &str) -> String {
        format!("{}://{port}-{name}.{}", self.inner.scheme, self.inner.domain)
    }

    /// The preview URL of a port and the sandbox's token.
    pub async fn preview_url(
        &self,
        who: &Principal,
        id_or_name: &str,
        port: u16,
    ) -> Result<PortPreviewUrl, PreviewError> {
        let rec = self.find(who, id_or_name).await?;
        Ok(PortPreviewUrl {
            url: self.url(port, &rec.id),
            token: sandbox_token(&self.inner.key, &rec.id),
            sandbox_id: rec.id,
        })
    }

    /// A new signed URL for a port, valid for `expires_in` seconds (default 60).
    #[tracing::instrument(skip(self, who), fields(org_id = %who.org_id))]
    pub async fn signed_url(
        &self,
        who: &Principal,
        id_or_name: &str,
        port: u16,
        expires_in: Option<i64>,
    ) -> Result<SignedPortPreviewUrl, PreviewError> {
        let secs = expires_in.unwrap_or(DEFAULT_SIGNED_SECS);
        if !(1..=MAX_SIGNED_SECS).contains(&secs) {
            return Err(PreviewError::BadExpiry(secs));
        }
        let rec = self.find(who, id_or_name).await?;
        let token = new_signed_token()?;
        let now = now_millis();
        let row = PreviewTokenRecord {
            token_hash: signed_token_hash(&token),
            sandbox_id: rec.id.clone(),
            port,
            expires_at: now + secs * 1000,
        };
        self.inner.store.insert_preview_token(&row, now).await.map_err(store("store signed preview token"))?;
        tracing::info!(sandbox_id = %rec.id, port, expires_in_secs = secs, "signed preview url issued");
        Ok(SignedPortPreviewUrl { url: self.url(port, &token), sandbox_id: rec.id, port, token })
    }

    /// Ends a signed URL now.
    pub async fn expire_signed_url(
        &self,
        who: &Principal,
        id_or_name: &str,
        port: u16,
        token: &str,
    ) -> Result<(), PreviewError> {
        let rec = self.find(who, id_or_name).await?;
        let hash = signed_token_hash(&token.trim().to_ascii_lowercase());
        if !self
            .inner
            .store
            .delete_preview_token(&rec.id, port, &hash)
            .await
            .map_err(store("expire signed preview token"))?
        {
            return Err(PreviewError::NoSignedUrl { sandbox_id: rec.id, port });
        }
        tracing::info!(sandbox_id = %rec.id, port, "signed preview url expired");
        Ok(())
    }

    /// Makes a sandbox's previews public (no credentials) or private; returns its id.
    pub async fn set_public(&self, who: &Principal, id_or_name: &str, public: bool) -> Result<String, PreviewError> {
        // A concurrent verb may move the state under us: re-read and retry a few times.
        for _ in 0..5 {
            let mut rec = self.find(who, id_or_name).await?;
            if rec.public == public {
                return Ok(rec.id);
            }
            let from = rec.state;
            rec.public = public;
            rec.updated_at = now_millis();
            if self.inner.store.update_sandbox_if(&rec, &[from]).await.map_err(store("set sandbox public flag"))? {
                tracing::info!(sandbox_id = %rec.id, public, "sandbox preview visibility changed");
                return Ok(rec.id);
            }
        }
        Err(PreviewError::Busy(id_or_name.to_string()))
    }

    /// What a request is for: a preview host name (any path, `/api` included) or the path
    /// form; `None` leaves it to the API.
    pub fn route(&self, req: &Request<Body>) -> Option<Result<Route, PreviewError>> {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().host());
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Some(host) = host
            && let Some(target) = parse_host(host, &self.inner.domain)
        {
            return Some(target.map(|target| Route { target, path_and_query: path_and_query.to_string() }));
        }
        parse_path(req.uri().path(), req.uri().query())
    }

    /// Authenticates and forwards one request; every failure is a plain-text answer.
    pub async fn serve(&self, route: Route, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        match self.serve_inner(route, req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(%method, error = %cove_types::error::chain(&e), "preview request refused");
                e.into_proxy_response()
            }
        }
    }

    async fn serve_inner(&self, route: Route, mut req: Request<Body>) -> Result<Response<Body>, PreviewError> {
        let (path, query) = match route.path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q)),
            None => (route.path_and_query.clone(), None),
        };
        let (query, query_token) = take_query_token(query);
        let path_and_query = with_query(&path, query.as_deref());
        let header_token = req.headers_mut().remove(TOKEN_HEADER).and_then(|v| v.to_str().ok().map(str::to_string));
        let bearer = self.take_api_key(req.headers_mut()).await;
        let up = self.authorize(&route.target, header_token.or(query_token), bearer).await?;
        self.forward(up, req, &path_and_query).await
    }

    /// Removes `Authorization: Bearer` when it holds a Cove API key (never forwarded), and
    /// answers whose it is; any other `Authorization` is the app's and stays.
    async fn take_api_key(&self, headers: &mut HeaderMap) -> Option<Principal> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim().to_string();
        let who = self.inner.keys.authenticate(Some(&key)).await.ok()?;
        headers.remove(header::AUTHORIZATION);
        Some(who)
    }

    async fn authorize(
        &self,
        target: &Target,
        token: Option<String>,
        api_key: Option<Principal>,
    ) -> Result<Upstream, PreviewError> {
        let now = now_millis();
        let (rec, port) = match target {
            Target::Signed { token, port } => {
                let expired =
                    || PreviewError::Unauthorized("this signed preview URL has expired or was never issued".into());
                let row = self
                    .inner
                    .store
                    .get_preview_token(&signed_token_hash(token), now)
                    .await
                    .map_err(store("look up signed preview token"))?
                    .ok_or_else(expired)?;
                if port.is_some_and(|p| p != row.port) {
                    return Err(PreviewError::Unauthorized(format!(
                        "this signed preview URL is for port {}, not {}",
                        row.port,
                        port.unwrap_or_default()
                    )));
                }
                let rec = self.sandbox(&row.sandbox_id).await?.ok_or_else(expired)?;
                (rec, row.port)
            }
            Target::Sandbox { id, port } => {
                let rec = self.sandbox(id).await?.ok_or_else(|| PreviewError::NotFound(id.clone()))?;
                let by_token = token.is_some_and(|t| token_matches(&self.inner.key, &rec.id, &t));
                let by_key = api_key.as_ref().is_some_and(|p| p.org_id == rec.org_id);
                if !(rec.public || by_token || by_key) {
                    let why = match (api_key.is_some(), by_token) {
                        (true, _) => "the API key is not one of this sandbox's organization".to_string(),
                        _ => format!(
                            "sandbox {} is private: send its preview token (GET /api/sandbox/{{id}}/ports/{port}/preview-url) \
                             in X-Daytona-Preview-Token, an API key of its organization as Authorization: Bearer, \
                             or use a signed preview URL",
                            rec.id
                        ),
                    };
                    return Err(PreviewError::Unauthorized(why));
                }
                (rec, *port)
            }
        };
        let ip = match (rec.state, self.inner.runtime.ip(&rec.id)) {
            (SandboxState::Started, Some(ip)) => ip,
            (state, _) => return Err(PreviewError::NotStarted { id: rec.id, state, port }),
        };
        Ok(Upstream { sandbox_id: rec.id, ip, port })
    }

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, PreviewError> {
        self.inner.store.get_sandbox_by_id(id).await.map_err(store("get sandbox"))
    }

    /// Sends the request to the sandbox's port, streaming both bodies; upgrades are bridged.
    async fn forward(
        &self,
        up: Upstream,
        mut req: Request<Body>,
        path_and_query: &str,
    ) -> Result<Response<Body>, PreviewError> {
        let upgrade = req.headers().get(header::UPGRADE).cloned().filter(|_| connection_has_upgrade(req.headers()));
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let client_ip = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        let host = headers.get(header::HOST).cloned();
        for h in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"] {
            headers.remove(h);
        }
        if let Some(ip) = client_ip {
            headers.insert("x-forwarded-for", HeaderValue::from_str(&ip.to_string()).expect("an IP is a valid header"));
        }
        if let Ok(v) = HeaderValue::from_str(&self.inner.scheme) {
            headers.insert("x-forwarded-proto", v);
        }
        if let Some(h) = host {
            headers.insert("x-forwarded-host", h);
        } else {
            let h = HeaderValue::from_str(&format!("{}:{}", up.ip, up.port)).expect("an address is a valid header");
            headers.insert(header::HOST, h);
        }
        if let Some(u) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u.clone());
        }
        let mut out = Request::builder()
            .method(parts.method)
            .uri(path_and_query)
            .body(body)
            .expect("a path and query taken from a valid request URI is a valid URI");
        *out.headers_mut() = headers;

        let addr = SocketAddr::from((up.ip, up.port));
        let connect_err = |source| PreviewError::Connect { id: up.sandbox_id.clone(), port: up.port, addr, source };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(connect_err)?,
            Err(_) => {
                return Err(connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let label = format!("sandbox {} port {}", up.sandbox_id, up.port);
        let mut resp = crate::proxy::exchange(stream, out, client_upgrade, &label)
            .await
            .map_err(|source| PreviewError::Upstream { id: up.sandbox_id.clone(), port: up.port, source })?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(resp.headers_mut());
        }
        Ok(resp)
    }
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1e2d4c-9a7b-4c1d-8e2f-0123456789ab";
    const DOMAIN: &str = "localhost:3000";

    fn host(h: &str) -> Option<Result<Target, PreviewError>> {
        parse_host(h, DOMAIN)
    }

    #[test]
    fn a_port_and_sandbox_id_under_the_domain_name_that_sandbox_and_port() {
        let t = host(&format!("8080-{ID}.localhost:3000")).unwrap().unwrap();
        assert_eq!(t, Target::Sandbox { id: ID.into(), port: 8080 });
    }

    #[test]
    fn host_names_compare_case_insensitively() {
        let t = host(&format!("8080-{}.LOCALHOST:3000", ID.to_uppercase())).unwrap().unwrap();
        assert_eq!(t, Target::Sandbox { id: ID.into(), port: 8080 });
    }

    #[test]
    fn ports_outside_1_to_65535_or_not_numbers_are_refused_naming_the_port() {
        for bad in ["0", "65536", "99999999", "80a", "+80", ""] {
            let e = host(&format!("{bad}-{ID}.localhost:3000")).unwrap().unwrap_err();
            assert!(matches!(e, PreviewError::BadPort(_)), "{bad}: {e}");
            assert!(e.to_string().contains("port"), "{e}");
        }
        assert_eq!(parse_port("65535").unwrap(), 65535);
        assert_eq!(parse_port("1").unwrap(), 1);
    }

    #[test]
    fn a_long_lowercase_alphanumeric_label_is_a_signed_token() {
        let token = "a".repeat(20) + &"7".repeat(20);
        let t = host(&format!("3000-{token}.localhost:3000")).unwrap().unwrap();
        assert_eq!(t, Target::Signed { token, port: Some(3000) });
    }

    #[test]
    fn the_api_host_other_hosts_and_other_ports_are_not_preview_hosts() {
        for h in ["localhost:3000", "127.0.0.1:3000", &format!("8080-{ID}.localhost:4000"), "example.com"] {
            assert!(host(h).is_none(), "{h}");
        }
        assert!(host(&format!("a.8080-{ID}.localhost:3000")).is_none(), "one label only");
    }

    #[test]
    fn a_label_under_the_domain_that_names_nothing_is_a_bad_host() {
        for h in [
            "8080-short.localhost:3000",
            "8080-NOT_A_TOKEN_but_long_enough_to_count.localhost:3000",
            "8080.localhost:3000",
        ] {
            match host(h) {
                Some(Err(PreviewError::BadHost { .. })) => {}
                other => panic!("{h}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_domain_without_a_port_ignores_the_hosts_port() {
        let t = parse_host(&format!("80-{ID}.preview.example.com:8443"), "preview.example.com").unwrap().unwrap();
        assert_eq!(t, Target::Sandbox { id: ID.into(), port: 80 });
    }

    #[test]
    fn the_path_form_strips_its_prefix_and_keeps_the_query() {
        let r = parse_path(&format!("/preview/{ID}/8000/a/b.txt"), Some("x=1")).unwrap().unwrap();
        assert_eq!(
            r,
            Route { target: Target::Sandbox { id: ID.into(), port: 8000 }, path_and_query: "/a/b.txt?x=1".into() }
        );
        let r = parse_path(&format!("/preview/{ID}/8000"), None).unwrap().unwrap();
        assert_eq!(r.path_and_query, "/");
        let token = "k".repeat(40);
        let r = parse_path(&format!("/preview/signed/{token}/index.html"), None).unwrap().unwrap();
        assert_eq!(r.target, Target::Signed { token, port: None });
        assert_eq!(r.path_and_query, "/index.html");
        assert!(matches!(parse_path(&format!("/preview/{ID}/0/x"), None), Some(Err(PreviewError::BadPort(_)))));
        assert!(parse_path("/api/sandbox", None).is_none());
    }

    #[test]
    fn the_sandbox_token_is_an_hmac_of_the_id_that_only_matches_its_own_sandbox() {
        let key = [7u8; 32];
        let t = sandbox_token(&key, ID);
        assert_eq!(t.len(), 64);
        assert_eq!(t, sandbox_token(&key, ID), "derived, so the same every time");
        assert!(token_matches(&key, ID, &t));
        assert!(!token_matches(&key, "another-sandbox", &t));
        assert!(!token_matches(&[8u8; 32], ID, &t), "another server's key");
        assert!(!token_matches(&key, ID, &t[..62]), "a prefix");
        assert!(!token_matches(&key, ID, "not hex"));
        assert!(!token_matches(&key, ID, ""));
    }

    #[test]
    fn signed_tokens_are_long_random_lowercase_alphanumerics() {
        let a = new_signed_token().unwrap();
        let b = new_signed_token().unwrap();
        assert_eq!(a.len(), SIGNED_TOKEN_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
        assert_ne!(a, b);
        assert!(matches!(parse_label(&format!("80-{a}")), Some(Ok(Target::Signed { .. }))));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("content-type", "text/plain"),
            ("x-app", "kept"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "x-app"]);
    }

    #[test]
    fn the_auth_query_parameter_is_taken_out_of_the_query() {
        assert_eq!(
            take_query_token(Some("a=1&DAYTONA_SANDBOX_AUTH_KEY=tok&b=2")),
            (Some("a=1&b=2".into()), Some("tok".into()))
        );
        assert_eq!(take_query_token(Some("DAYTONA_SANDBOX_AUTH_KEY=tok")), (None, Some("tok".into())));
        assert_eq!(take_query_token(Some("a=1")), (Some("a=1".into()), None));
        assert_eq!(take_query_token(None), (None, None));
    }
}
