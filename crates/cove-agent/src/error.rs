//! The one mapping from module errors to HTTP: a status from [`ErrorKind`], and the body in the
//! toolbox error envelope `{statusCode, message, path, timestamp, method, source}` (the path is
//! filled in by [`envelope_layer`], which also turns axum's plain-text rejections into envelopes).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Written into `source` so a client can tell agent errors from proxy errors.
pub const SOURCE: &str = "COVE_AGENT";

/// Class of a failure, which picks the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404.
    NotFound,
    /// 409: the name is taken.
    AlreadyExists,
    /// 400.
    InvalidArgument,
    /// 408: the operation ran out of time.
    Timeout,
    /// 410: the object is gone (a finished command, an exited session shell).
    Gone,
    /// 403.
    PermissionDenied,
    /// 500.
    Internal,
    /// 501: a toolbox feature of Daytona's this agent does not implement.
    Unimplemented,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// Class.
    pub kind: ErrorKind,
    /// Client-facing message (the agent runs inside the user's own sandbox, so I/O details are
    /// shown rather than hidden).
    pub message: String,
}

/// Marks a response whose body the envelope layer must write.
#[derive(Debug, Clone)]
struct PendingEnvelope(String);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    status_code: u16,
    message: &'a str,
    path: &'a str,
    method: &'a str,
    timestamp: String,
    source: &'static str,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists => StatusCode::CONFLICT,
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The kind for an I/O error kind.
    pub fn from_io(e: std::io::ErrorKind) -> Self {
        match e {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::IsADirectory
            | std::io::ErrorKind::DirectoryNotEmpty => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.kind == ErrorKind::Internal {
            tracing::warn!(error = %self.message, "request failed");
        }
        let mut r = self.kind.status().into_response();
        r.extensions_mut().insert(PendingEnvelope(self.message));
        r
    }
}

/// Renders `e` and its sources as `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Middleware: writes the envelope for [`ApiError`]s and for axum's plain-text rejections
/// (bad JSON, missing query parameters, unknown routes).
pub async fn envelope_layer(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if let Some(PendingEnvelope(message)) = resp.extensions().get::<PendingEnvelope>().cloned() {
        return envelope(status, &message, &path, &method);
    }
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if (status.is_client_error() || status.is_server_error()) && plain {
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
        let mut message = String::from_utf8_lossy(&body).into_owned();
        if message.is_empty() {
            message = status.canonical_reason().unwrap_or("error").to_lowercase();
        }
        return envelope(status, &message, &path, &method);
    }
    resp
}

fn envelope(status: StatusCode, message: &str, path: &str, method: &str) -> Response {
    let body = Envelope {
        status_code: status.as_u16(),
        message,
        path,
        method,
        timestamp: iso8601(SystemTime::now()),
        source: SOURCE,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json))
        .unwrap_or_else(|_| status.into_response())
}

/// `2024-05-01T12:00:00.123Z` (UTC, milliseconds).
pub fn iso8601(t: SystemTime) -> String {
    let (secs, millis) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(e) => (-(e.duration().as_secs() as i64), 0),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_iso8601_utc_with_milliseconds() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(iso8601(t), "2024-02-29T12:34:56.789Z");
    }
}
