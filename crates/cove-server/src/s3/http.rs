//! The S3-compatible endpoint: one handler that authenticates every request with SigV4 and
//! the temporary credentials, confines it to the caller's `{org}/` prefix, and maps the
//! path-style operations the Daytona SDKs use onto the [`ObjectStore`].

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, NaiveDateTime, Utc};

use super::body::{self, BodyError, Expect};
use super::creds::{CredentialError, CredentialIssuer, Grant};
use super::sigv4::{self, Authorization, RequestParts, SigV4Error};
use super::store::{ObjectError, ObjectMeta, ObjectStore};
use super::xml;

/// Largest single PUT or part (S3's limit).
const MAX_OBJECT: u64 = 5 << 30;
/// Largest XML request body.
const MAX_XML: usize = 1 << 20;
/// How far `x-amz-date` may be from the server's clock.
const MAX_SKEW_SECS: i64 = 15 * 60;
/// Highest part number.
const MAX_PART: u32 = 10_000;
/// Most parts one ListParts answer lists.
const MAX_LIST_PARTS: usize = 1000;
/// The S3 code of a request refused by the organization's staging limit (as Ceph RGW names
/// a quota refusal).
const QUOTA_EXCEEDED: &str = "QuotaExceeded";

/// What the endpoint needs.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) issuer: CredentialIssuer,
    pub(crate) store: ObjectStore,
    pub(crate) bucket: String,
    pub(crate) region: String,
}

/// An S3 error on its way out.
#[derive(Debug)]
struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        S3Error { status, code, message: message.into() }
    }

    fn access_denied(message: impl Into<String>) -> Self {
        S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    fn invalid_argument(message: impl Into<String>) -> Self {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    fn not_implemented(message: impl Into<String>) -> Self {
        S3Error::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }

    fn internal(e: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cove_types::error::chain(e), "object storage request failed");
        S3Error::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "internal error; see the server log")
    }
}

impl From<ObjectError> for S3Error {
    fn from(e: ObjectError) -> Self {
        let msg = e.to_string();
        match e {
            ObjectError::InvalidKey(_) => S3Error::new(StatusCode::BAD_REQUEST, "InvalidArgument", msg),
            ObjectError::InvalidBucket(_) => S3Error::new(StatusCode::BAD_REQUEST, "InvalidBucketName", msg),
            ObjectError::NoSuchKey { .. } => S3Error::new(StatusCode::NOT_FOUND, "NoSuchKey", msg),
            ObjectError::NoSuchUpload(_) => S3Error::new(StatusCode::NOT_FOUND, "NoSuchUpload", msg),
            ObjectError::InvalidPart(_) => S3Error::new(StatusCode::BAD_REQUEST, "InvalidPart", msg),
            ObjectError::InvalidPartOrder => S3Error::new(StatusCode::BAD_REQUEST, "InvalidPartOrder", msg),
            ObjectError::KeyConflict(_) => S3Error::new(StatusCode::CONFLICT, "OperationAborted", msg),
            ObjectError::OverLimit(_) => S3Error::new(StatusCode::FORBIDDEN, QUOTA_EXCEEDED, msg),
            ObjectError::Io { .. } => S3Error::internal(&e),
        }
    }
}

impl From<BodyError> for S3Error {
    fn from(e: BodyError) -> Self {
        let msg = e.to_string();
        match e {
            BodyError::Sha256Mismatch => S3Error::new(StatusCode::BAD_REQUEST, "XAmzContentSHA256Mismatch", msg),
            BodyError::Md5Mismatch => S3Error::new(StatusCode::BAD_REQUEST, "BadDigest", msg),
            BodyError::Crc32Mismatch => S3Error::new(StatusCode::BAD_REQUEST, "BadDigest", msg),
            BodyError::Chunked(_) | BodyError::Length { .. } => {
                S3Error::new(StatusCode::BAD_REQUEST, "IncompleteBody", msg)
            }
            BodyError::TooLarge(_) => S3Error::new(StatusCode::BAD_REQUEST, "EntityTooLarge", msg),
            BodyError::OverLimit(_) => S3Error::new(StatusCode::FORBIDDEN, QUOTA_EXCEEDED, msg),
            BodyError::Read(_) => S3Error::new(StatusCode::BAD_REQUEST, "IncompleteBody", msg),
            BodyError::Write { .. } => S3Error::internal(&e),
        }
    }
}

impl From<CredentialError> for S3Error {
    fn from(e: CredentialError) -> Self {
        let msg = e.to_string();
        match e {
            CredentialError::MissingToken => S3Error::new(StatusCode::FORBIDDEN, "InvalidAccessKeyId", msg),
            CredentialError::InvalidToken => S3Error::new(StatusCode::BAD_REQUEST, "InvalidToken", msg),
            CredentialError::Expired(_) => S3Error::new(StatusCode::BAD_REQUEST, "ExpiredToken", msg),
            CredentialError::AccessKeyMismatch => S3Error::new(StatusCode::FORBIDDEN, "InvalidAccessKeyId", msg),
            _ => S3Error::internal(&e),
        }
    }
}

impl From<SigV4Error> for S3Error {
    fn from(e: SigV4Error) -> Self {
        let msg = e.to_string();
        match e {
            SigV4Error::UnsupportedAlgorithm => S3Error::invalid_argument(msg),
            SigV4Error::MalformedAuthorization(_) => {
                S3Error::new(StatusCode::BAD_REQUEST, "AuthorizationHeaderMalformed", msg)
            }
            SigV4Error::MissingSignedHeader(_) => S3Error::access_denied(msg),
            SigV4Error::BadEncoding => S3Error::invalid_argument(msg),
        }
    }
}

/// How the payload is announced in `x-amz-content-sha256`.
enum Payload {
    Hex([u8; 32]),
    Unsigned,
    ChunkedUnsigned,
}

/// One request after authentication.
struct Call {
    grant: Grant,
    payload: Payload,
    query: Vec<(String, String)>,
    bucket: String,
    key: Option<String>,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
}

/// The router of the S3 listener: everything goes to one handler.
pub(crate) fn router(ep: Arc<Endpoint>) -> Router {
    Router::new().fallback(handle).with_state(ep)
}

async fn handle(State(ep): State<Arc<Endpoint>>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_ascii_uppercase();
    let resource = req.uri().path().to_string();
    let is_head = req.method() == Method::HEAD;
    let method = req.method().clone();
    let mut resp = match dispatch(&ep, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(method = %method, resource = %resource, code = e.code, message = %e.message, "s3 request refused");
            if is_head {
                e.status.into_response()
            } else {
                let body = xml::error(e.code, &e.message, &resource, &request_id);
                (e.status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
            }
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    resp.headers_mut().insert(header::SERVER, HeaderValue::from_static("cove"));
    resp
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn parse_query(raw: &str) -> Result<Vec<(String, String)>, S3Error> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (sigv4::percent_decode(k), sigv4::percent_decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(S3Error::invalid_argument("invalid percent-encoding in the query")),
            }
        })
        .collect()
}

/// Checks the signature and credentials; answers who is calling and what they address.
fn authenticate(ep: &Endpoint, method: &Method, uri: &axum::http::Uri, h: &HeaderMap) -> Result<Call, S3Error> {
    let raw_query = uri.query().unwrap_or("");
    let query = parse_query(raw_query)?;
    let Some(auth) = header_str(h, "authorization") else {
        if query.iter().any(|(k, _)| k == "X-Amz-Algorithm") {
            return Err(S3Error::not_implemented(
                "presigned URLs are not supported; sign with the Authorization header",
            ));
        }
        return Err(S3Error::access_denied("anonymous requests are not allowed"));
    };
    let auth = Authorization::parse(auth)?;
    if auth.service != "s3" {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "AuthorizationHeaderMalformed",
            format!("the credential scope names service {:?}; expecting \"s3\"", auth.service),
        ));
    }
    if auth.region != ep.region {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "AuthorizationHeaderMalformed",
            format!("the region {:?} is wrong; expecting {:?}", auth.region, ep.region),
        ));
    }
    if !auth.signed_headers.iter().any(|s| s == "host") {
        return Err(S3Error::access_denied("the host header must be signed"));
    }
    let amz_date = header_str(h, "x-amz-date").ok_or_else(|| S3Error::access_denied("x-amz-date is required"))?;
    let when = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| S3Error::access_denied("x-amz-date is not YYYYMMDDTHHMMSSZ"))?
        .and_utc();
    if !amz_date.starts_with(&auth.date) {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "the credential date differs from x-amz-date",
        ));
    }
    let now = Utc::now();
    if (now - when).num_seconds().abs() > MAX_SKEW_SECS {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            "the difference between the request time and the server's time is too large",
        ));
    }
    let payload_hash = header_str(h, "x-amz-content-sha256").ok_or_else(|| {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidRequest", "missing required header x-amz-content-sha256")
    })?;
    let payload = match payload_hash {
        sigv4::UNSIGNED_PAYLOAD => Payload::Unsigned,
        sigv4::STREAMING_UNSIGNED_TRAILER => Payload::ChunkedUnsigned,
        p if p.starts_with("STREAMING-") => {
            return Err(S3Error::not_implemented(format!("x-amz-content-sha256 {p} is not supported")));
        }
        p => {
            let bytes = hex::decode(p).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                S3Error::invalid_argument(
                    "x-amz-content-sha256 must be a hex sha256, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                )
            })?;
            Payload::Hex(bytes)
        }
    };
    let grant = ep.issuer.verify(&auth.access_key_id, header_str(h, "x-amz-security-token"), now)?;
    let parts = RequestParts { method: method.as_str(), raw_path: uri.path(), raw_query, headers: h, payload_hash };
    if !sigv4::verify(&parts, &auth, amz_date, &grant.secret_access_key)? {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided",
        ));
    }
    let path = uri.path().strip_prefix('/').unwrap_or(uri.path());
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) if !k.is_empty() => (b, Some(k)),
        Some((b, _)) => (b, None),
        None => (path, None),
    };
    let decode = |s: &str| {
        sigv4::percent_decode(s).ok_or_else(|| S3Error::invalid_argument("invalid percent-encoding in the path"))
    };
    let bucket = decode(bucket)?;
    let key = key.map(decode).transpose()?;
    Ok(Call { grant, payload, query, bucket, key })
}

async fn dispatch(ep: &Endpoint, req: Request) -> Result<Response, S3Error> {
    let (parts, body) = req.into_parts();
    tracing::debug!(
        method = %parts.method,
        uri = %parts.uri,
        content_sha256 = header_str(&parts.headers, "x-amz-content-sha256").unwrap_or(""),
        content_encoding = header_str(&parts.headers, "content-encoding").unwrap_or(""),
        crc32 = header_str(&parts.headers, "x-amz-checksum-crc32").is_some(),
        trailer = header_str(&parts.headers, "x-amz-trailer").unwrap_or(""),
        "s3 request"
    );
    let call = authenticate(ep, &parts.method, &parts.uri, &parts.headers)?;
    if call.bucket.is_empty() {
        return Err(S3Error::access_denied("listing buckets is not allowed"));
    }
    if call.bucket != ep.bucket {
        return Err(S3Error::new(StatusCode::NOT_FOUND, "NoSuchBucket", format!("no bucket {:?}", call.bucket)));
    }
    let org_prefix = format!("{}/", call.grant.org_id);
    let Some(key) = call.key.clone() else {
        return match parts.method {
            Method::HEAD => Ok(StatusCode::OK.into_response()),
            Method::GET if call.param("list-type") == Some("2") => list_v2(ep, &call, &org_prefix).await,
            Method::GET => Err(S3Error::not_implemented("only ListObjectsV2 (list-type=2) is supported")),
            _ => Err(S3Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "bucket operations are not allowed",
            )),
        };
    };
    if !key.starts_with(&org_prefix) {
        return Err(S3Error::access_denied(format!("these credentials only allow keys under {org_prefix}")));
    }
    let h = &parts.headers;
    match parts.method {
        Method::HEAD => {
            let meta = ep.store.head(&ep.bucket, &key).await?;
            Ok(object_headers(&meta, h, meta.size).into_response())
        }
        Method::GET if call.has("uploadId") => list_parts(ep, &call, &key).await,
        Method::GET => get_object(ep, &key, h).await,
        Method::PUT if call.has("partNumber") || call.has("uploadId") => upload_part(ep, &call, &key, h, body).await,
        Method::PUT if h.contains_key("x-amz-copy-source") => {
            Err(S3Error::not_implemented("CopyObject is not supported"))
        }
        Method::PUT => put_object(ep, &call, &key, h, body).await,
        Method::POST if call.has("uploads") => {
            small_body(&call, body).await?;
            let id = ep.store.create_upload(&ep.bucket, &key).await?;
            tracing::debug!(key = %key, upload_id = %id, "multipart upload started");
            Ok(xml_response(StatusCode::OK, xml::initiate_multipart(&ep.bucket, &key, &id)))
        }
        Method::POST if call.has("uploadId") => complete(ep, &call, &key, body).await,
        Method::DELETE if call.has("uploadId") => {
            ep.store.abort(call.param("uploadId").unwrap_or(""), &ep.bucket, &key).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::DELETE => {
            ep.store.delete(&ep.bucket, &key).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(S3Error::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method not allowed on objects")),
    }
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn object_headers(meta: &ObjectMeta, req: &HeaderMap, content_length: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut set = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    set("content-length", content_length.to_string());
    set("content-type", "application/octet-stream".into());
    set("etag", format!("\"{}\"", meta.etag));
    set("last-modified", http_date(meta.last_modified));
    set("accept-ranges", "bytes".into());
    if header_str(req, "x-amz-checksum-mode").is_some_and(|m| m.eq_ignore_ascii_case("ENABLED"))
        && let Some(c) = &meta.crc32
    {
        set("x-amz-checksum-crc32", c.clone());
    }
    h
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive `(start, end)`; `Err` when unsatisfiable.
fn parse_range(v: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 || size == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size.saturating_sub(1)),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size.saturating_sub(1))),
    };
    if r.0 >= size || r.0 > r.1 { Some(Err(())) } else { Some(Ok(r)) }
}

async fn get_object(ep: &Endpoint, key: &str, h: &HeaderMap) -> Result<Response, S3Error> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let meta = ep.store.head(&ep.bucket, key).await?;
    let path = ep.store.object_path(&ep.bucket, key)?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ObjectError::NoSuchKey { bucket: ep.bucket.clone(), key: key.into() }.into());
        }
        Err(source) => return Err(ObjectError::Io { op: "open object", path, source }.into()),
    };
    let range = header_str(h, "range").and_then(|r| parse_range(r, meta.size));
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, meta.size),
        Some(Err(())) => {
            return Err(S3Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "the requested range is not satisfiable",
            ));
        }
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|source| S3Error::from(ObjectError::Io { op: "seek object", path: path.clone(), source }))?;
    }
    let mut headers = object_headers(&meta, h, len);
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, meta.size))
    {
        headers.insert(header::CONTENT_RANGE, v);
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
    Ok((status, headers, body).into_response())
}

/// The checks a streamed body gets from its headers.
fn expect_from(call: &Call, h: &HeaderMap) -> Result<Expect, S3Error> {
    let mut e = Expect { max_len: MAX_OBJECT, ..Expect::default() };
    match call.payload {
        Payload::Hex(b) => e.sha256 = Some(b),
        Payload::Unsigned => {}
        Payload::ChunkedUnsigned => {
            e.aws_chunked = true;
            e.decoded_length = header_str(h, "x-amz-decoded-content-length").and_then(|v| v.parse().ok());
        }
    }
    if let Some(m) = header_str(h, "content-md5") {
        e.md5 = Some(
            STANDARD
                .decode(m.trim())
                .map_err(|_| S3Error::new(StatusCode::BAD_REQUEST, "InvalidDigest", "Content-MD5 is not base64"))?,
        );
    }
    for (name, _) in h.iter() {
        let n = name.as_str();
        if n.starts_with("x-amz-checksum-")
            && n != "x-amz-checksum-crc32"
            && n != "x-amz-checksum-mode"
            && n != "x-amz-checksum-type"
        {
            return Err(S3Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                format!("{n} is not supported; use CRC32"),
            ));
        }
    }
    e.crc32 = header_str(h, "x-amz-checksum-crc32").map(|s| s.trim().to_string());
    Ok(e)
}

fn write_headers(etag: &str, crc32: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Some(c) = crc32.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("x-amz-checksum-crc32", c);
    }
    h
}

async fn put_object(ep: &Endpoint, call: &Call, key: &str, h: &HeaderMap, body: Body) -> Result<Response, S3Error> {
    ep.store.object_path(&ep.bucket, key)?;
    let expect = expect_from(call, h)?;
    // The bytes count against the organization's staging limit while they arrive.
    let mut charge = ep.store.staging().charge(&call.grant.org_id);
    if let Some(n) = declared_length(call, h) {
        charge.check(n).map_err(ObjectError::from)?;
    }
    let tmp = ep.store.temp_file();
    let written = body::write(body, tmp.path(), &expect, &mut charge).await?;
    let stored = super::store::StoredMeta { etag: written.md5_hex.clone(), crc32: written.crc32.clone() };
    ep.store.commit(&ep.bucket, key, tmp, stored).await?;
    tracing::info!(org_id = %call.grant.org_id, key = %key, size = written.size, "object stored");
    Ok((StatusCode::OK, write_headers(&written.md5_hex, written.crc32.as_deref())).into_response())
}

async fn upload_part(ep: &Endpoint, call: &Call, key: &str, h: &HeaderMap, body: Body) -> Result<Response, S3Error> {
    let id = call.param("uploadId").unwrap_or("");
    let n: u32 = call
        .param("partNumber")
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=MAX_PART).contains(n))
        .ok_or_else(|| S3Error::invalid_argument(format!("partNumber must be an integer from 1 to {MAX_PART}")))?;
    // In use (not swept) until this request ends, however it ends.
    let upload = ep.store.begin_upload(id, &ep.bucket, key)?;
    let expect = expect_from(call, h)?;
    // A part that cannot fit is refused before its body is read; one whose length is not
    // announced is refused at the first byte past the limit. Either way nothing is kept.
    let mut charge = upload.charge();
    if let Some(len) = declared_length(call, h) {
        charge.check(len).map_err(ObjectError::from)?;
    }
    let tmp = ep.store.temp_file();
    let written = body::write(body, tmp.path(), &expect, &mut charge).await.inspect_err(|e| {
        if let BodyError::OverLimit(e) = e {
            tracing::info!(org_id = %upload.org(), upload_id = %id, part = n, staged = e.staged, limit = e.limit, "part refused: staging limit");
        }
    })?;
    ep.store.commit_part(&upload, n, tmp, written.size, &written.md5_hex, charge).await?;
    Ok((StatusCode::OK, write_headers(&written.md5_hex, written.crc32.as_deref())).into_response())
}

/// The payload length a request announces (`x-amz-decoded-content-length` for aws-chunked,
/// else `Content-Length`), if it does.
fn declared_length(call: &Call, h: &HeaderMap) -> Option<u64> {
    let name = match call.payload {
        Payload::ChunkedUnsigned => "x-amz-decoded-content-length",
        _ => "content-length",
    };
    header_str(h, name).and_then(|v| v.trim().parse().ok())
}

async fn list_parts(ep: &Endpoint, call: &Call, key: &str) -> Result<Response, S3Error> {
    let id = call.param("uploadId").unwrap_or("");
    let marker = match call.param("part-number-marker") {
        None | Some("") => 0,
        Some(v) => v.parse::<u32>().map_err(|_| S3Error::invalid_argument("part-number-marker must be a number"))?,
    };
    let max_parts = match call.param("max-parts") {
        None => MAX_LIST_PARTS,
        Some(v) => {
            v.parse::<usize>().map_err(|_| S3Error::invalid_argument("max-parts must be a number"))?.min(MAX_LIST_PARTS)
        }
    };
    let mut parts = ep.store.list_parts(id, &ep.bucket, key).await?;
    parts.retain(|p| p.number > marker);
    let truncated = parts.len() > max_parts;
    parts.truncate(max_parts);
    let doc = xml::list_parts(
        &xml::ListParts { bucket: &ep.bucket, key, upload_id: id, marker, max_parts, truncated },
        &parts,
    );
    Ok(xml_response(StatusCode::OK, doc))
}

/// A small body (XML or empty), read whole and checked against a hex payload hash.
async fn small_body(call: &Call, body: Body) -> Result<Vec<u8>, S3Error> {
    let bytes = axum::body::to_bytes(body, MAX_XML)
        .await
        .map_err(|_| S3Error::new(StatusCode::BAD_REQUEST, "MaxMessageLengthExceeded", "request body too large"))?;
    match call.payload {
        Payload::Hex(want) => {
            let got: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
            if got != want {
                return Err(BodyError::Sha256Mismatch.into());
            }
        }
        Payload::Unsigned => {}
        Payload::ChunkedUnsigned => {
            return Err(S3Error::invalid_argument("aws-chunked bodies are only accepted for uploads"));
        }
    }
    Ok(bytes.to_vec())
}

async fn complete(ep: &Endpoint, call: &Call, key: &str, body: Body) -> Result<Response, S3Error> {
    let id = call.param("uploadId").unwrap_or("").to_string();
    let bytes = small_body(call, body).await?;
    let text = String::from_utf8(bytes)
        .map_err(|_| S3Error::new(StatusCode::BAD_REQUEST, "MalformedXML", "body is not UTF-8"))?;
    let parts = xml::parse_complete(&text).ok_or_else(|| {
        S3Error::new(StatusCode::BAD_REQUEST, "MalformedXML", "not a CompleteMultipartUpload document")
    })?;
    let meta = ep.store.complete(&id, &ep.bucket, key, &parts).await?;
    tracing::info!(org_id = %call.grant.org_id, key = %key, size = meta.size, parts = parts.len(), "multipart object stored");
    let location = format!("/{}/{}", ep.bucket, sigv4::uri_encode(key, true));
    Ok(xml_response(StatusCode::OK, xml::complete_multipart(&location, &ep.bucket, key, &meta.etag)))
}

async fn list_v2(ep: &Endpoint, call: &Call, org_prefix: &str) -> Result<Response, S3Error> {
    let prefix = call.param("prefix").unwrap_or("");
    if !prefix.starts_with(org_prefix) {
        return Err(S3Error::access_denied(format!("these credentials only list keys under {org_prefix}")));
    }
    if call.param("delimiter").is_some_and(|d| !d.is_empty()) {
        return Err(S3Error::not_implemented("delimiter is not supported"));
    }
    let max_keys = match call.param("max-keys") {
        None => 1000,
        Some(v) => v.parse::<usize>().map_err(|_| S3Error::invalid_argument("max-keys must be a number"))?.min(1000),
    };
    let token = call.param("continuation-token");
    let after_token = token
        .map(|t| URL_SAFE_NO_PAD.decode(t).ok().and_then(|b| String::from_utf8(b).ok()))
        .map(|t| t.ok_or_else(|| S3Error::invalid_argument("the continuation token is not valid")))
        .transpose()?;
    let start_after = call.param("start-after");
    let after = match (after_token.as_deref(), start_after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let (objects, truncated) =
        if max_keys == 0 { (Vec::new(), false) } else { ep.store.list(&ep.bucket, prefix, after, max_keys).await? };
    let next_token = if truncated { objects.last().map(|o| URL_SAFE_NO_PAD.encode(o.key.as_bytes())) } else { None };
    let doc = xml::list_v2(
        &xml::ListV2 {
            bucket: &ep.bucket,
            prefix,
            max_keys,
            continuation_token: token,
            start_after,
            next_token,
            url_encode: call.param("encoding-type") == Some("url"),
        },
        &objects,
    );
    Ok(xml_response(StatusCode::OK, doc))
}

#[cfg(test)]
mod tests {
    use axum::http::Request as HttpRequest;
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    use futures_util::StreamExt;

    use super::super::creds::{DEFAULT_TTL, TemporaryCredentials};
    use super::*;
    use crate::staging::{Staging, UploadLimits};

    const HOST: &str = "127.0.0.1:9443";

    fn endpoint(dir: &std::path::Path) -> Arc<Endpoint> {
        endpoint_with(dir, Staging::default())
    }

    fn endpoint_with(dir: &std::path::Path, staging: Staging) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            issuer: CredentialIssuer::from_secret([3; 32], DEFAULT_TTL),
            store: ObjectStore::open(dir, staging).unwrap(),
            bucket: "cove-builds".into(),
            region: "us-east-1".into(),
        })
    }

    /// Signs like an SDK would.
    fn signed(
        c: &TemporaryCredentials,
        method: &str,
        target: &str,
        body: &[u8],
        secret: Option<&str>,
    ) -> HttpRequest<Body> {
        let now = Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let payload = hex::encode(Sha256::digest(body));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static(HOST));
        h.insert("x-amz-date", HeaderValue::from_str(&amz_date).unwrap());
        h.insert("x-amz-content-sha256", HeaderValue::from_str(&payload).unwrap());
        h.insert("x-amz-security-token", HeaderValue::from_str(&c.session_token).unwrap());
        let signed: Vec<String> =
            ["host", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"].map(String::from).to_vec();
        let parts = RequestParts { method, raw_path: path, raw_query: query, headers: &h, payload_hash: &payload };
        let date = &amz_date[..8];
        let scope = format!("{date}/us-east-1/s3/aws4_request");
        let sts = sigv4::string_to_sign(&amz_date, &scope, &sigv4::canonical_request(&parts, &signed).unwrap());
        let sig = sigv4::signature(secret.unwrap_or(&c.secret_access_key), (date, "us-east-1", "s3"), &sts);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
            c.access_key_id,
            signed.join(";")
        );
        let mut req = HttpRequest::builder().method(method).uri(target).body(Body::from(body.to_vec())).unwrap();
        *req.headers_mut() = h;
        req.headers_mut().insert("authorization", HeaderValue::from_str(&auth).unwrap());
        req
    }

    async fn send(ep: &Arc<Endpoint>, req: HttpRequest<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = router(ep.clone()).oneshot(req).await.unwrap();
        let (p, b) = resp.into_parts();
        (p.status, p.headers, String::from_utf8_lossy(&axum::body::to_bytes(b, 1 << 20).await.unwrap()).into_owned())
    }

    #[tokio::test]
    async fn a_signed_put_is_stored_and_read_back_by_head_get_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let ep = endpoint(dir.path());
        let c = ep.issuer.issue("org1", Utc::now()).unwrap();
        let (st, h, _) = send(&ep, signed(&c, "PUT", "/cove-builds/org1/h%201/context.tar", b"data", None)).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h["etag"], "\"8d777f385d3dfec8815d20f7496026dc\"");
        assert_eq!(std::fs::read(dir.path().join("objects/cove-builds/org1/h 1/context.tar")).unwrap(), b"data");
        let (st, h, _) = send(&ep, signed(&c, "HEAD", "/cove-builds/org1/h%201/context.tar", b"", None)).await;
        assert_eq!((st, h["content-length"].to_str().unwrap()), (StatusCode::OK, "4"));
        let (st, _, body) = send(&ep, signed(&c, "GET", "/cove-builds/org1/h%201/context.tar", b"", None)).await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "data"));
        let (st, _, body) =
            send(&ep, signed(&c, "GET", "/cove-builds?list-type=2&max-keys=1&prefix=org1%2Fh%201%2F", b"", None)).await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.contains("<Key>org1/h 1/context.tar</Key>") && body.contains("<KeyCount>1</KeyCount>"), "{body}");
        let (st, _, _) = send(&ep, signed(&c, "HEAD", "/cove-builds/org1/nothing", b"", None)).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn another_organizations_prefix_is_access_denied() {
        let dir = tempfile::tempdir().unwrap();
        let ep = endpoint(dir.path());
        let c = ep.issuer.issue("org1", Utc::now()).unwrap();
        for (m, target) in [
            ("PUT", "/cove-builds/org2/h/context.tar"),
            ("HEAD", "/cove-builds/org2/h/context.tar"),
            ("GET", "/cove-builds?list-type=2&prefix=org2%2F"),
            ("GET", "/cove-builds?list-type=2&prefix=org1"),
            ("PUT", "/cove-builds/org1%2F..%2Forg2/x"),
        ] {
            let (st, _, body) = send(&ep, signed(&c, m, target, b"", None)).await;
            assert!(st == StatusCode::FORBIDDEN || st == StatusCode::BAD_REQUEST, "{m} {target}: {st} {body}");
            if m != "HEAD" {
                assert!(body.contains("<Code>AccessDenied</Code>") || body.contains("InvalidArgument"), "{body}");
            }
        }
        assert!(!dir.path().join("objects/cove-builds/org2").exists());
    }

    #[tokio::test]
    async fn bad_signatures_and_expired_or_forged_tokens_are_refused_with_s3_codes() {
        let dir = tempfile::tempdir().unwrap();
        let ep = endpoint(dir.path());
        let c = ep.issuer.issue("org1", Utc::now()).unwrap();
        let (st, _, body) = send(&ep, signed(&c, "PUT", "/cove-builds/org1/k", b"x", Some("wrong"))).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert!(body.contains("<Code>SignatureDoesNotMatch</Code>"), "{body}");

        let old = ep.issuer.issue("org1", Utc::now() - chrono::Duration::hours(2)).unwrap();
        let (st, _, body) = send(&ep, signed(&old, "PUT", "/cove-builds/org1/k", b"x", None)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(body.contains("<Code>ExpiredToken</Code>"), "{body}");

        let mut req = signed(&c, "PUT", "/cove-builds/org1/k", b"x", None);
        *req.body_mut() = Body::from("y");
        let (st, _, body) = send(&ep, req).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(body.contains("XAmzContentSHA256Mismatch"), "{body}");
        assert!(ep.store.path("cove-builds", "org1/k").is_none());

        let req = HttpRequest::builder().uri("/cove-builds/org1/k").body(Body::empty()).unwrap();
        let (st, _, body) = send(&ep, req).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert!(body.contains("AccessDenied"));
    }

    #[tokio::test]
    async fn a_multipart_upload_completes_from_its_xml_and_unknown_uploads_are_no_such_upload() {
        let dir = tempfile::tempdir().unwrap();
        let ep = endpoint(dir.path());
        let c = ep.issuer.issue("org1", Utc::now()).unwrap();
        let key = "/cove-builds/org1/h/context.tar";
        let (st, _, body) = send(&ep, signed(&c, "POST", &format!("{key}?uploads"), b"", None)).await;
        assert_eq!(st, StatusCode::OK);
        let id = body.split("<UploadId>").nth(1).unwrap().split('<').next().unwrap().to_string();
        let (_, h1, _) = send(&ep, signed(&c, "PUT", &format!("{key}?partNumber=1&uploadId={id}"), b"ab", None)).await;
        let (_, h2, _) = send(&ep, signed(&c, "PUT", &format!("{key}?partNumber=2&uploadId={id}"), b"cd", None)).await;
        let doc = format!(
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{}</ETag></Part><Part><PartNumber>2</PartNumber><ETag>{}</ETag></Part></CompleteMultipartUpload>",
            h1["etag"].to_str().unwrap(),
            h2["etag"].to_str().unwrap()
        );
        let (st, _, body) = send(&ep, signed(&c, "POST", &format!("{key}?uploadId={id}"), doc.as_bytes(), None)).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(body.contains("<CompleteMultipartUploadResult"));
        assert_eq!(std::fs::read(ep.store.context_tar("org1", "h").unwrap()).unwrap(), b"abcd");
        let (st, _, body) =
            send(&ep, signed(&c, "PUT", &format!("{key}?partNumber=1&uploadId={id}"), b"x", None)).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(body.contains("<Code>NoSuchUpload</Code>"));
    }

    /// Starts a multipart upload of `key`; answers its id.
    async fn create(ep: &Arc<Endpoint>, c: &TemporaryCredentials, key: &str) -> String {
        let (st, _, body) = send(ep, signed(c, "POST", &format!("{key}?uploads"), b"", None)).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        body.split("<UploadId>").nth(1).unwrap().split('<').next().unwrap().to_string()
    }

    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn a_part_that_would_pass_the_limit_shared_with_registry_uploads_is_refused_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(UploadLimits { org_bytes: 10, ..UploadLimits::default() });
        let ep = endpoint_with(dir.path(), staging.clone());
        // A registry push of the same organization, over the same ledger, holds 6 bytes.
        let content = cove_image::ContentStore::open(&dir.path().join("content")).unwrap();
        let registry = crate::registry::upload::Uploads::new(content, staging.clone());
        let push = registry.start("org1/app").unwrap();
        let six = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(b"123456".to_vec())]);
        registry.append("org1/app", &push, Default::default(), six).await.unwrap();
        let c = ep.issuer.issue("org1", Utc::now()).unwrap();
        let key = "/cove-builds/org1/h/context.tar";
        let id = create(&ep, &c, key).await;
        let (st, _, body) =
            send(&ep, signed(&c, "PUT", &format!("{key}?partNumber=1&uploadId={id}"), b"abc", None)).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(staging.staged("org1"), 9);
        let (st, _, body) =
            send(&ep, signed(&c, "PUT", &format!("{key}?partNumber=2&uploadId={id}"), b"defg", None)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("<Code>QuotaExceeded</Code>"), "{body}");
        assert!(body.contains("--upload-staging-limit-mib") && body.contains("the limit is 10 bytes"), "{body}");
        assert_eq!(staging.staged("org1"), 9);
        assert_eq!(files(&dir.path().join("objects/.tmp")), 0, "the refused part left nothing staged");
        let (st, _, body) = send(&ep, signed(&c, "GET", &format!("{key}?uploadId={id}"), b"", None)).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(body.contains("<PartNumber>1</PartNumber>") && !body.contains("<PartNumber>2</PartNumber>"), "{body}");
        // Once the push is cancelled, the part fits; aborting gives everything back.
        registry.cancel("org1/app", &push).await.unwrap();
        let (st, _, _) =
            send(&ep, signed(&c, "PUT", &format!("{key}?partNumber=2&uploadId={id}"), b"defg", None)).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _, _) = send(&ep, signed(&c, "DELETE", &format!("{key}?uploadId={id}"), b"", None)).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        assert_eq!(staging.staged("org1"), 0);
        let (st, _, body) = send(&ep, signed(&c, "GET", &format!("{key}?uploadId={id}"), b"", None)).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(body.contains("<Code>NoSuchUpload</Code>"), "{body}");
    }

    #[tokio::test]
    async fn a_part_whose_body_breaks_off_or_whose_request_is_dropped_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::default();
        let ep = endpoint_with(dir.path(), staging.clone());
        let c = ep.issuer.issue("org1", Utc::now()).unwrap();
        let key = "/cove-builds/org1/h/context.tar";
        let id = create(&ep, &c, key).await;
        let target = format!("{key}?partNumber=1&uploadId={id}");
        let tmp = dir.path().join("objects/.tmp");
        // The client sends some bytes, then its connection fails.
        let mut req = signed(&c, "PUT", &target, b"abcdef", None);
        *req.body_mut() = Body::from_stream(futures_util::stream::iter(vec![
            Ok(b"abc".to_vec()),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away")),
        ]));
        let (st, _, body) = send(&ep, req).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(files(&tmp), 0);
        // The client sends some bytes, then stalls, and the server drops the request.
        let mut req = signed(&c, "PUT", &target, b"abcdef", None);
        let first = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(b"abc".to_vec())]);
        *req.body_mut() = Body::from_stream(first.chain(futures_util::stream::pending()));
        let request = router(ep.clone()).oneshot(req);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(300), request).await.is_err());
        assert_eq!(files(&tmp), 0, "the dropped request's temp file is deleted");
        assert_eq!(staging.staged("org1"), 0, "and its bytes are given back");
        assert_eq!(files(&dir.path().join("objects/.uploads").join(&id)), 1, "only upload.json");
    }

    #[test]
    fn ranges_follow_http_semantics() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=0-500", 100), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
