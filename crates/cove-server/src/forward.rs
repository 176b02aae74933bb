//! Forwarding between nodes (issue 18, step 3): any node accepts any request, and one for a
//! sandbox that another node holds is sent on to that node, whose answer (status, headers,
//! body, a WebSocket upgrade) streams back.
//!
//! Contract:
//! - Which requests: the verbs a sandbox's own node must carry out (`DELETE /api/sandbox/{id}`,
//!   `POST …/start|stop|archive|network-settings`) and the whole toolbox (`/toolbox/{id}/…`).
//!   [`to_owner`] runs after the caller's key is authenticated here and before the handler,
//!   looks the sandbox up (only on a node: a server without `--database-url` never forwards)
//!   and, when its `node_id` is another node, sends the request to that node's `address`
//!   instead of running the handler. Reads and label or interval changes only touch the shared
//!   database and are answered by whichever node got them.
//! - What is forwarded: the request as received, the caller's `Authorization` included: the
//!   owner authenticates the caller itself against the shared database; no node ever asserts
//!   a principal. Only `Host` (the owner's) and [`TOKEN_HEADER`] are set anew.
//! - [`TOKEN_HEADER`] proves the request comes from a node of this installation: an
//!   HMAC-SHA256, under the installation secret (a row of `installation_secrets` written once
//!   by the first node, migration 0013), over the sending node's id, the method, the path and
//!   query, and the time. The owner ([`accept`]) refuses a bad one, and one older (or newer)
//!   than [`TOKEN_MAX_AGE`], with 401. The secret and the token are never logged.
//! - No second hop: a request that came with a valid token and is still not for this node
//!   gets a 409 naming the nodes involved instead of being forwarded again.
//! - An answer given for another node carries [`NODE_HEADER`], naming the node that answered.
//! - A `lost` owner is not tried: 503 naming it and its state; an unreachable one is a 503
//!   naming its address. Owners are reached over plain HTTP (`http://` addresses).

use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, OriginalUri, RawPathParams, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cove_types::ErrorKind;
use hmac::Mac;

use crate::service::keys::Principal;
use crate::state::AppState;
use crate::store::{NodeState, Store};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The node token header on a forwarded request.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-cove-node-token");
/// The node that answered a forwarded request (on its answer).
pub const NODE_HEADER: HeaderName = HeaderName::from_static("x-cove-node");
/// How far a token's time may be from the receiver's clock.
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(60);
/// The `installation_secrets` row that keys node tokens.
const SECRET_NAME: &str = "node-token";
/// How long connecting to an owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed forwarding step, named by what failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The installation secret could not be made or read.
    #[error("read the installation secret that keys node tokens")]
    Secret(#[source] crate::store::StoreError),
    /// The stored secret is not what this code writes.
    #[error("the stored installation secret is not 32 bytes of hex")]
    BadSecret,
    /// A request came with a node token that does not verify.
    #[error("node token refused: {0}")]
    Token(&'static str),
    /// The owner's row could not be read.
    #[error("look up node {node}")]
    Lookup {
        /// The node.
        node: String,
        /// Cause.
        #[source]
        source: crate::store::StoreError,
    },
    /// The owner has no row (a sandbox row naming a node that never registered).
    #[error("sandbox {sandbox} is on node {node}, which is not registered")]
    Unknown {
        /// The sandbox.
        sandbox: String,
        /// The node.
        node: String,
    },
    /// The owner is lost: not tried.
    #[error("sandbox {sandbox} is on node {node}, which is {state} (no heartbeat since {heartbeat_at} ms)")]
    Lost {
        /// The sandbox.
        sandbox: String,
        /// The node.
        node: String,
        /// Its state.
        state: &'static str,
        /// Its last heartbeat, Unix milliseconds.
        heartbeat_at: i64,
    },
    /// The owner's address is not one this node can reach.
    #[error("node {node} has address {address:?}, which is not an http://host:port URL")]
    Address {
        /// The node.
        node: String,
        /// The address.
        address: String,
    },
    /// Connecting to the owner failed or timed out.
    #[error("connect to node {node} at {address}")]
    Connect {
        /// The node.
        node: String,
        /// The address.
        address: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange with the owner failed.
    #[error("forward the request to node {node} at {address}")]
    Exchange {
        /// The node.
        node: String,
        /// The address.
        address: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// A forwarded request that is not for this node either (the loop guard).
    #[error(
        "node {from} forwarded this request for sandbox {sandbox} to node {me}, but the sandbox is on node {owner}; \
         a forwarded request is not forwarded again"
    )]
    NotHere {
        /// The sandbox.
        sandbox: String,
        /// The node that forwarded it.
        from: String,
        /// This node.
        me: String,
        /// The node the database names.
        owner: String,
    },
}

impl ForwardError {
    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Token(_) => StatusCode::UNAUTHORIZED,
            Self::NotHere { .. } => StatusCode::CONFLICT,
            Self::Lost { .. } | Self::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unknown { .. } | Self::Address { .. } | Self::Exchange { .. } => StatusCode::BAD_GATEWAY,
            Self::Secret(_) | Self::BadSecret | Self::Lookup { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ForwardError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return crate::api::ApiError::classify(ErrorKind::Internal, &self).into_response();
        }
        crate::api::envelope(status, cove_types::error::chain(&self), String::new())
    }
}

/// A node's forwarding: its id and the installation secret.
#[derive(Clone)]
pub struct Forwarder {
    me: String,
    secret: [u8; 32],
    store: std::sync::Arc<dyn Store>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("me", &self.me).finish_non_exhaustive()
    }
}

impl Forwarder {
    /// This node's forwarding, with the installation secret: the stored one, or 32 fresh
    /// random bytes stored now when this is the installation's first node.
    pub async fn open(store: std::sync::Arc<dyn Store>, me: String) -> Result<Self, ForwardError> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).expect("the kernel's random source is readable");
        let stored = store.installation_secret(SECRET_NAME, &hex::encode(fresh)).await.map_err(ForwardError::Secret)?;
        let secret =
            hex::decode(stored).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or(ForwardError::BadSecret)?;
        Ok(Forwarder { me, secret, store })
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.me
    }

    /// The token this node sends with `method path_and_query` at `now` (Unix seconds).
    pub fn token(&self, method: &Method, path_and_query: &str, now: i64) -> String {
        sign(&self.secret, &self.me, method, path_and_query, now)
    }

    /// Sends `req` (for sandbox `sandbox`) to node `owner` and returns its answer.
    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox, owner = %owner, method = %req.method()))]
    async fn send(&self, mut req: Request, sandbox: &str, owner: &str) -> Result<Response, ForwardError> {
        let node = self
            .store
            .get_node(owner)
            .await
            .map_err(|source| ForwardError::Lookup { node: owner.into(), source })?
            .ok_or_else(|| ForwardError::Unknown { sandbox: sandbox.into(), node: owner.into() })?;
        if node.state == NodeState::Lost {
            return Err(ForwardError::Lost {
                sandbox: sandbox.into(),
                node: node.id,
                state: node.state.as_str(),
                heartbeat_at: node.heartbeat_at,
            });
        }
        let bad_address = || ForwardError::Address { node: node.id.clone(), address: node.address.clone() };
        let authority = node
            .address
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .filter(|a| !a.is_empty())
            .ok_or_else(bad_address)?
            .to_string();
        let host_value = HeaderValue::from_str(&authority).map_err(|_| bad_address())?;
        let connect_err =
            |source| ForwardError::Connect { node: node.id.clone(), address: node.address.clone(), source };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&authority))
            .await
            .map_err(|_| connect_err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        // The path as the client sent it: a nested router sees it without its prefix.
        let path_and_query = req
            .extensions()
            .get::<OriginalUri>()
            .map_or_else(|| req.uri().clone(), |o| o.0.clone())
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
        let client_upgrade = req.headers().contains_key(header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let token = self.token(&parts.method, &path_and_query, chrono::Utc::now().timestamp());
        let mut out = axum::http::Request::builder().method(parts.method).uri(&path_and_query);
        for (name, value) in &parts.headers {
            if name != header::HOST && name != TOKEN_HEADER {
                out = out.header(name, value);
            }
        }
        let out = out
            .header(header::HOST, host_value)
            .header(TOKEN_HEADER, HeaderValue::from_str(&token).expect("a token is ASCII"))
            .body(body)
            .expect("a request rebuilt from a valid one is valid");
        tracing::debug!(address = %node.address, "forwarding to the sandbox's node");
        crate::proxy::exchange(stream, out, client_upgrade, &format!("node {}", node.id))
            .await
            .map_err(|source| ForwardError::Exchange { node: node.id.clone(), address: node.address.clone(), source })
    }
}

/// The node token for `node`'s request `method path_and_query` at `at` (Unix seconds):
/// `v1.<node>.<at>.<hex HMAC-SHA256>`.
pub fn sign(secret: &[u8], node: &str, method: &Method, path_and_query: &str, at: i64) -> String {
    format!("v1.{node}.{at}.{}", hex::encode(mac(secret, node, method, path_and_query, at).finalize().into_bytes()))
}

/// Checks `token` for `method path_and_query` at `now` (Unix seconds); the sending node's
/// id when it verifies.
pub fn verify(
    secret: &[u8],
    token: &str,
    method: &Method,
    path_and_query: &str,
    now: i64,
) -> Result<String, ForwardError> {
    let mut fields = token.split('.');
    let (Some("v1"), Some(node), Some(at), Some(sig), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(ForwardError::Token("malformed"));
    };
    let at: i64 = at.parse().map_err(|_| ForwardError::Token("malformed time"))?;
    let sig = hex::decode(sig).map_err(|_| ForwardError::Token("malformed signature"))?;
    // The signature first: a forged token learns nothing from the time check.
    mac(secret, node, method, path_and_query, at)
        .verify_slice(&sig)
        .map_err(|_| ForwardError::Token("bad signature"))?;
    let max = i64::try_from(TOKEN_MAX_AGE.as_secs()).unwrap_or(i64::MAX);
    if (now - at).abs() > max {
        return Err(ForwardError::Token("expired (or from a clock more than 60 s off)"));
    }
    Ok(node.to_string())
}

fn mac(secret: &[u8], node: &str, method: &Method, path_and_query: &str, at: i64) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    // Newline-separated: none of the fields can hold one (ids, methods, request targets).
    m.update(format!("cove-node-token-v1\n{node}\n{method}\n{path_and_query}\n{at}").as_bytes());
    m
}

/// Marks a request that arrived with a valid node token: the node that sent it.
#[derive(Debug, Clone)]
pub struct ForwardedBy(pub String);

/// Middleware on the whole app: a request carrying [`TOKEN_HEADER`] must verify (else 401),
/// is marked [`ForwardedBy`], and its answer names this node in [`NODE_HEADER`].
pub async fn accept(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(token) = req.headers_mut().remove(TOKEN_HEADER) else {
        return next.run(req).await;
    };
    let Some(fw) = &state.forwarder else {
        return ForwardError::Token("this server is not a node (no --database-url)").into_response();
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_string();
    let now = chrono::Utc::now().timestamp();
    let from = match token
        .to_str()
        .map_err(|_| ForwardError::Token("malformed"))
        .and_then(|t| verify(&fw.secret, t, req.method(), &pq, now))
    {
        Ok(from) => from,
        Err(e) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), error = %e, "forwarded request refused");
            return e.into_response();
        }
    };
    tracing::debug!(from = %from, method = %req.method(), path = %req.uri().path(), "request forwarded by a node");
    req.extensions_mut().insert(ForwardedBy(from));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(fw.id()) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    resp
}

/// Whether `method` on the route `matched` is carried out by the sandbox's own node.
fn owner_verb(method: &Method, matched: &str) -> bool {
    if matched.starts_with("/toolbox/") {
        return true;
    }
    match *method {
        Method::DELETE => matched.ends_with("/sandbox/{id}"),
        Method::POST => ["/start", "/stop", "/archive", "/network-settings"]
            .iter()
            .any(|verb| matched.strip_suffix(verb).is_some_and(|r| r.ends_with("/sandbox/{id}"))),
        _ => false,
    }
}

/// Route middleware on the sandbox and toolbox routes, after authentication: sends a verb
/// for another node's sandbox to that node (module doc).
pub async fn to_owner(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(fw) = &state.forwarder else {
        return next.run(req).await;
    };
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    if !owner_verb(req.method(), &matched) {
        return next.run(req).await;
    }
    let (req, id) = sandbox_param(req, &state).await;
    let (Some(who), Some(id)) = (req.extensions().get::<Principal>().cloned(), id) else {
        return next.run(req).await;
    };
    let (sandbox, owner) = match state.sandboxes.owner_elsewhere(&who, &id).await {
        Ok(Some(found)) => found,
        // Here, not found, or a failed lookup: the handler answers as it does without nodes.
        Ok(None) | Err(_) => return next.run(req).await,
    };
    if let Some(ForwardedBy(from)) = req.extensions().get::<ForwardedBy>() {
        let e = ForwardError::NotHere { sandbox, from: from.clone(), me: fw.id().into(), owner };
        tracing::warn!(error = %e, "forwarded request is not for this node");
        return e.into_response();
    }
    match fw.send(req, &sandbox, &owner).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(sandbox_id = %sandbox, owner = %owner, error = %cove_types::error::chain(&e), "forwarding failed");
            e.into_response()
        }
    }
}

/// The `{id}` of the matched route, percent-decoded.
async fn sandbox_param(req: Request, state: &AppState) -> (Request, Option<String>) {
    let (mut parts, body) = req.into_parts();
    let id = RawPathParams::from_request_parts(&mut parts, state)
        .await
        .ok()
        .and_then(|p| p.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string()));
    (Request::from_parts(parts, body), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_verifies_for_its_request_and_names_the_sending_node() {
        let t = sign(SECRET, "node-a", &Method::POST, "/api/sandbox/s1/stop?force=true", 1000);
        assert_eq!(verify(SECRET, &t, &Method::POST, "/api/sandbox/s1/stop?force=true", 1030).unwrap(), "node-a");
    }

    #[test]
    fn a_token_older_or_newer_than_a_minute_is_refused() {
        let t = sign(SECRET, "node-a", &Method::GET, "/toolbox/s1/version", 1000);
        assert!(verify(SECRET, &t, &Method::GET, "/toolbox/s1/version", 1060).is_ok());
        for now in [1061, 939] {
            let e = verify(SECRET, &t, &Method::GET, "/toolbox/s1/version", now).unwrap_err();
            assert!(e.to_string().contains("expired"), "{e}");
        }
    }

    #[test]
    fn a_token_for_another_request_node_time_or_secret_is_refused() {
        let t = sign(SECRET, "node-a", &Method::POST, "/api/sandbox/s1/stop", 1000);
        let bad =
            |e: Result<String, ForwardError>| assert!(matches!(e, Err(ForwardError::Token("bad signature"))), "{e:?}");
        bad(verify(SECRET, &t, &Method::DELETE, "/api/sandbox/s1/stop", 1000));
        bad(verify(SECRET, &t, &Method::POST, "/api/sandbox/s2/stop", 1000));
        bad(verify(b"another secret", &t, &Method::POST, "/api/sandbox/s1/stop", 1000));
        bad(verify(SECRET, &t.replace("node-a", "node-b"), &Method::POST, "/api/sandbox/s1/stop", 1000));
        bad(verify(SECRET, &t.replace(".1000.", ".1001."), &Method::POST, "/api/sandbox/s1/stop", 1000));
        let mut flipped = t.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        bad(verify(SECRET, &flipped, &Method::POST, "/api/sandbox/s1/stop", 1000));
        for junk in ["", "v1", "v2.node-a.1000.00", "v1.node-a.x.00", "v1.node-a.1000.zz", "v1.a.b.1000.00"] {
            assert!(verify(SECRET, junk, &Method::POST, "/api/sandbox/s1/stop", 1000).is_err(), "{junk}");
        }
    }

    #[test]
    fn only_the_verbs_a_sandbox_node_carries_out_are_forwarded() {
        for (m, p) in [
            (Method::DELETE, "/api/sandbox/{id}"),
            (Method::POST, "/api/sandbox/{id}/start"),
            (Method::POST, "/api/sandbox/{id}/stop"),
            (Method::POST, "/api/sandbox/{id}/archive"),
            (Method::POST, "/api/sandbox/{id}/network-settings"),
            (Method::GET, "/toolbox/{id}/{*path}"),
        ] {
            assert!(owner_verb(&m, p), "{m} {p}");
        }
        for (m, p) in [
            (Method::GET, "/api/sandbox/{id}"),
            (Method::PUT, "/api/sandbox/{id}/labels"),
            (Method::POST, "/api/sandbox/{id}/autostop/{interval}"),
            (Method::POST, "/api/sandbox"),
            (Method::GET, "/api/sandbox"),
        ] {
            assert!(!owner_verb(&m, p), "{m} {p}");
        }
    }
}
