//! The one mapping from service errors to HTTP: status from `ErrorKind`, body in Daytona's
//! error envelope. Internal details are logged here and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cove_types::ErrorKind;
use cove_types::dto::ErrorEnvelope;

use crate::service::keys::KeyError;
use crate::service::sandboxes::SandboxError;
use crate::service::snapshots::SnapshotError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// Class, which picks the status.
    pub kind: ErrorKind,
    /// Client-facing message.
    pub message: String,
    /// Filled in by the envelope middleware.
    pub path: String,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into(), path: String::new() }
    }
}

impl ApiError {
    /// `kind` and the error's chain, except that a failure for want of space on the data disk
    /// (ENOSPC, SQLite's "database or disk is full") is a 507 saying so and where, never a
    /// bare 500.
    pub fn classify(kind: ErrorKind, e: &(dyn std::error::Error + 'static)) -> Self {
        let chain = cove_types::error::chain(e);
        if matches!(kind, ErrorKind::Internal | ErrorKind::DiskFull) && crate::space::is_full(e) {
            return ApiError::new(ErrorKind::DiskFull, format!("{}: {chain}", crate::space::full_message()));
        }
        ApiError::new(kind, chain)
    }
}

fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Exhausted => StatusCode::CONFLICT,
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
    }
}

fn code(s: StatusCode) -> String {
    s.canonical_reason().unwrap_or("Error").to_ascii_uppercase().replace(' ', "_")
}

/// Builds an envelope response for `status` (also used for 404s of unknown routes).
pub fn envelope(s: StatusCode, message: String, path: String) -> Response {
    let body = ErrorEnvelope {
        status_code: s.as_u16(),
        error: s.canonical_reason().unwrap_or("Error").to_string(),
        message,
        code: code(s),
        path,
        timestamp: cove_types::dto::iso8601(chrono::Utc::now()),
        source: "COVE_API".into(),
    };
    (s, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let s = status(self.kind);
        let message = if self.kind == ErrorKind::Internal {
            tracing::error!(error = %self.message, "internal error");
            "internal server error; see the server log".to_string()
        } else {
            self.message
        };
        envelope(s, message, self.path)
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

impl From<crate::service::registries::DockerRegistryError> for ApiError {
    fn from(e: crate::service::registries::DockerRegistryError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

impl From<crate::service::builds::BuildFailure> for ApiError {
    fn from(e: crate::service::builds::BuildFailure) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}
