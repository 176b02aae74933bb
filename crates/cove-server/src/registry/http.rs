//! The `/v2/` routes: one catch-all, parsed by [`super::path`]; each arm authenticates,
//! makes one service call and shapes the answer the distribution spec prescribes. Errors go
//! out as `{"errors":[{"code","message","detail"}]}` through [`error_response`].

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use cove_image::oci;
use cove_types::Digest;
use tokio::io::AsyncReadExt as _;

use super::path::{self, Route};
use super::range::BlobRange;
use super::service::{Access, Caller, RegistryError};
use super::upload::{Chunk, UploadError};
use crate::state::AppState;

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
const CHALLENGE: &str = "Basic realm=\"cove\"";

/// `/v2/` and everything under it, without a body size limit (blobs stream to disk).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .layer(DefaultBodyLimit::disable())
}

#[derive(serde::Serialize)]
struct Errors<'a> {
    errors: [ErrorBody<'a>; 1],
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    detail: serde_json::Value,
}

/// The one mapping of a registry error to a response. The whole cause chain goes to the log
/// (and, for the caller's own mistakes, into the message); a server-side failure shows the
/// caller only a pointer to the log.
fn error_response(e: RegistryError) -> Response {
    let (status, code) = e.code();
    let mut status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut chain = cove_types::error::chain(&e);
    // A push that failed for want of room on the data disk says so and where (507), as the
    // API does, rather than a bare 500: the operator can act on it.
    if status == StatusCode::INTERNAL_SERVER_ERROR && crate::space::is_full(&e) {
        tracing::error!(code, error = %chain, "registry request failed: data disk full");
        status = StatusCode::INSUFFICIENT_STORAGE;
        chain = format!("{}: {chain}", crate::space::full_message());
    }
    let message = match status {
        StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::error!(status = status.as_u16(), code, error = %chain, "registry request failed");
            "internal server error; see the server log".to_string()
        }
        // Probes: clients ask anonymously first and HEAD blobs to see what to upload.
        StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => {
            tracing::debug!(status = status.as_u16(), code, error = %chain, "registry request refused");
            chain
        }
        _ => {
            tracing::warn!(status = status.as_u16(), code, error = %chain, "registry request refused");
            chain
        }
    };
    let body = Errors { errors: [ErrorBody { code, message, detail: e.detail() }] };
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    resp
}

/// A response with `status`, `headers` and `body`.
fn reply(status: StatusCode, headers: &[(&'static str, String)], body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    r
}

async fn caller(s: &AppState, headers: &HeaderMap) -> Result<Caller, RegistryError> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    s.registry.authenticate(auth).await
}

/// `GET /v2/`: 200 for an authenticated caller, else the Basic challenge.
async fn base(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match caller(&s, &headers).await {
        Ok(_) => reply(StatusCode::OK, &[("content-type", "application/json".into())], Body::from("{}")),
        Err(e) => error_response(e),
    }
}

async fn dispatch(
    State(s): State<AppState>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = Unread::new(body);
    let result = async {
        let who = caller(&s, &parts.headers).await?;
        let route = path::parse(&rest)?;
        handle(&s, &who, &parts.method, &parts.headers, &q, route, body.body()).await
    };
    let mut resp = result.await.unwrap_or_else(error_response);
    if !body.drain().await {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Bytes of a request body left unread by an early answer (401, 404, a refused upload) that
/// are read and dropped before the answer goes out.
const DRAIN_LIMIT: u64 = 64 << 20;
/// How long that drain may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body handed to a handler through a shared handle, so that what the handler left
/// unread can be drained after it answered. An HTTP/1.1 client still sending its body when
/// the answer arrives (most send the whole body first) would otherwise see the connection
/// reset instead of the answer, and a client reusing the connection would fail its next
/// request.
struct Unread(std::sync::Arc<tokio::sync::Mutex<axum::body::BodyDataStream>>);

impl Unread {
    fn new(body: Body) -> Self {
        Unread(std::sync::Arc::new(tokio::sync::Mutex::new(body.into_data_stream())))
    }

    /// A body that reads from the shared stream.
    fn body(&self) -> Body {
        use futures_util::StreamExt as _;
        let stream = futures_util::stream::unfold(self.0.clone(), |shared| async move {
            let item = shared.lock().await.next().await;
            item.map(|i| (i, shared))
        });
        Body::from_stream(stream)
    }

    /// Reads and drops what is left, up to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIME`]; whether
    /// the body was read to its end (when not, the connection must close).
    async fn drain(self) -> bool {
        use futures_util::StreamExt as _;
        let mut stream = self.0.lock().await;
        let mut dropped = 0u64;
        let done = tokio::time::timeout(DRAIN_TIME, async {
            while dropped <= DRAIN_LIMIT {
                match stream.next().await {
                    Some(Ok(chunk)) => dropped += chunk.len() as u64,
                    Some(Err(_)) => return false,
                    None => return true,
                }
            }
            false
        })
        .await;
        done.unwrap_or(false)
    }
}

fn digest_param(q: &HashMap<String, String>) -> Result<Digest, RegistryError> {
    let d = q.get("digest").ok_or(RegistryError::DigestMissing)?;
    d.parse().map_err(|_| path::PathError::Digest(d.clone()).into())
}

fn range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn upload_headers(name: &str, id: &str, size: u64) -> [(&'static str, String); 3] {
    [
        ("location", format!("/v2/{name}/blobs/uploads/{id}")),
        ("docker-upload-uuid", id.to_string()),
        ("range", range(size)),
    ]
}

fn created_blob(name: &str, d: &Digest) -> Response {
    let h = [("location", format!("/v2/{name}/blobs/{d}")), ("docker-content-digest", d.to_string())];
    reply(StatusCode::CREATED, &h, Body::empty())
}

/// What a chunk's `Content-Range` and `Content-Length` say; a `Content-Range` that is not
/// text is malformed like one that does not parse.
fn chunk(headers: &HeaderMap) -> Result<Chunk, RegistryError> {
    let text = |h| headers.get(h).map(|v: &HeaderValue| v.to_str().unwrap_or("\u{fffd}"));
    Chunk::from_headers(text(header::CONTENT_RANGE), text(header::CONTENT_LENGTH)).map_err(RegistryError::Upload)
}

/// An error answer for an upload, with the upload's `Location` and `Range` when the session
/// is still there (a refused chunk tells the client where to resume).
fn upload_error(e: RegistryError, name: &str, id: &str) -> Response {
    let size = match &e {
        RegistryError::Upload(UploadError::OutOfOrder { size, .. }) => Some(*size),
        _ => None,
    };
    let mut r = error_response(e);
    for (k, v) in size.map(|size| upload_headers(name, id, size)).into_iter().flatten() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

async fn handle(
    s: &AppState,
    who: &Caller,
    method: &Method,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    route: Route,
    body: Body,
) -> Result<Response, RegistryError> {
    let reg = &s.registry;
    let n = q.get("n").and_then(|v| v.parse::<usize>().ok());
    let last = q.get("last").map(String::as_str);
    match (method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => {
            Ok(reply(StatusCode::OK, &[("content-type", "application/json".into())], Body::from("{}")))
        }
        (Method::GET, Route::Catalog) => {
            let (repos, more) = reg.catalog(who, n, last);
            let mut h = vec![("content-type", "application/json".to_string())];
            if let (true, Some(n), Some(l)) = (more, n, repos.last()) {
                h.push(("link", format!("</v2/_catalog?n={n}&last={l}>; rel=\"next\"")));
            }
            Ok(reply(StatusCode::OK, &h, Body::from(serde_json::json!({ "repositories": repos }).to_string())))
        }
        (Method::GET, Route::Tags(name)) => {
            let (tags, more) = reg.tags(who, &name, n, last)?;
            let mut h = vec![("content-type", "application/json".to_string())];
            if let (true, Some(n), Some(l)) = (more, n, tags.last()) {
                h.push(("link", format!("</v2/{name}/tags/list?n={n}&last={l}>; rel=\"next\"")));
            }
            Ok(reply(StatusCode::OK, &h, Body::from(serde_json::json!({ "name": name, "tags": tags }).to_string())))
        }
        (m @ (Method::GET | Method::HEAD), Route::Manifest(name, r)) => {
            let man = reg.manifest(who, &name, &r)?;
            let h = [
                ("content-type", man.media_type.clone()),
                ("docker-content-digest", man.digest.to_string()),
                ("content-length", man.bytes.len().to_string()),
                ("etag", format!("\"{}\"", man.digest)),
            ];
            let b = if m == Method::HEAD { Body::empty() } else { Body::from(man.bytes) };
            Ok(reply(StatusCode::OK, &h, b))
        }
        (Method::PUT, Route::Manifest(name, r)) => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let bytes = axum::body::to_bytes(body, super::service::MAX_MANIFEST_BYTES + 1)
                .await
                .map_err(|e| RegistryError::ManifestInvalid(format!("read the body: {e}")))?;
            let pushed = reg.push_manifest(who, &name, &r, ct, &bytes)?;
            let d = &pushed.digest;
            let mut h =
                vec![("location", format!("/v2/{name}/manifests/{d}")), ("docker-content-digest", d.to_string())];
            if let Some(subject) = pushed.subject {
                h.push(("oci-subject", subject.to_string()));
            }
            Ok(reply(StatusCode::CREATED, &h, Body::empty()))
        }
        (Method::PUT, Route::BadReference(_, why)) => Err(why.into()),
        (Method::GET | Method::HEAD, Route::BadReference(name, why)) => {
            Err(reg.bad_reference(who, &name, Access::Pull, &why))
        }
        (Method::DELETE, Route::BadReference(name, why)) => Err(reg.bad_reference(who, &name, Access::Push, &why)),
        (Method::GET, Route::Referrers(name, d)) => {
            let artifact_type = q.get("artifactType").map(String::as_str).filter(|t| !t.is_empty());
            let index = reg.referrers(who, &name, &d, artifact_type)?;
            let mut h = vec![("content-type", oci::OCI_INDEX.to_string())];
            if artifact_type.is_some() {
                h.push(("oci-filters-applied", "artifactType".to_string()));
            }
            Ok(reply(StatusCode::OK, &h, Body::from(index.to_string())))
        }
        (Method::DELETE, Route::Manifest(name, r)) => {
            reg.delete_manifest(who, &name, &r)?;
            Ok(reply(StatusCode::ACCEPTED, &[], Body::empty()))
        }
        (m @ (Method::GET | Method::HEAD), Route::Blob(name, d)) => {
            let (file, size) = reg.open_blob(who, &name, &d).await?;
            let etag = format!("\"{d}\"");
            let mut h = vec![
                ("content-type", "application/octet-stream".to_string()),
                ("docker-content-digest", d.to_string()),
                ("accept-ranges", "bytes".to_string()),
                ("etag", etag.clone()),
            ];
            // A HEAD answers for the whole blob; so does a GET whose `If-Range` names another.
            let text = |k| headers.get(k).map(|v: &HeaderValue| v.to_str().unwrap_or_default());
            let asked =
                text(header::RANGE).filter(|_| m == Method::GET && text(header::IF_RANGE).is_none_or(|t| t == etag));
            let (status, start, len) = match BlobRange::of(asked, size) {
                BlobRange::Whole => (StatusCode::OK, 0, size),
                BlobRange::Part { start, end } => {
                    h.push(("content-range", format!("bytes {start}-{end}/{size}")));
                    (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
                }
                BlobRange::Unsatisfiable => {
                    tracing::debug!(repository = %name, digest = %d, size, range = ?asked, "blob range not satisfiable");
                    h.push(("content-range", format!("bytes */{size}")));
                    return Ok(reply(StatusCode::RANGE_NOT_SATISFIABLE, &h, Body::empty()));
                }
            };
            h.push(("content-length", len.to_string()));
            let b = if m == Method::HEAD {
                Body::empty()
            } else {
                let file = reg.blob_part(file, &d, start).await?;
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10))
            };
            Ok(reply(status, &h, b))
        }
        (Method::DELETE, Route::Blob(name, d)) => {
            reg.delete_blob(who, &name, &d)?;
            Ok(reply(StatusCode::ACCEPTED, &[], Body::empty()))
        }
        (Method::POST, Route::StartUpload(name)) => {
            if let (Some(mount), Some(from)) = (q.get("mount"), q.get("from"))
                && let Ok(d) = mount.parse::<Digest>()
                && reg.mount(who, &name, &d, from)?
            {
                return Ok(created_blob(&name, &d));
            }
            if q.contains_key("digest") && !q.contains_key("mount") {
                let d = digest_param(q)?;
                reg.upload_whole(who, &name, &d, body.into_data_stream()).await?;
                return Ok(created_blob(&name, &d));
            }
            let id = reg.start_upload(who, &name)?;
            Ok(reply(StatusCode::ACCEPTED, &upload_headers(&name, &id, 0), Body::empty()))
        }
        (Method::GET, Route::Upload(name, id)) => {
            let size = reg.upload_status(who, &name, &id).await?;
            Ok(reply(StatusCode::NO_CONTENT, &upload_headers(&name, &id, size), Body::empty()))
        }
        (Method::PATCH, Route::Upload(name, id)) => {
            let chunk = chunk(headers)?;
            match reg.upload_chunk(who, &name, &id, chunk, body.into_data_stream()).await {
                Ok(size) => Ok(reply(StatusCode::ACCEPTED, &upload_headers(&name, &id, size), Body::empty())),
                Err(e) => Ok(upload_error(e, &name, &id)),
            }
        }
        (Method::PUT, Route::Upload(name, id)) => {
            let d = digest_param(q)?;
            let chunk = chunk(headers)?;
            match reg.upload_finish(who, &name, &id, &d, chunk, body.into_data_stream()).await {
                Ok(()) => Ok(created_blob(&name, &d)),
                Err(e) => Ok(upload_error(e, &name, &id)),
            }
        }
        (Method::DELETE, Route::Upload(name, id)) => {
            reg.upload_cancel(who, &name, &id).await?;
            Ok(reply(StatusCode::NO_CONTENT, &[], Body::empty()))
        }
        (m, r) => Err(RegistryError::Unsupported(format!("{m} on {r:?}"))),
    }
}
