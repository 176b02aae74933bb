//! Preview links (`/sandbox/{id}/ports/{port}/…`, `/sandbox/{id}/public/{isPublic}`) and the
//! middleware that hands preview requests to [`crate::preview`] before the API sees them.

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cove_types::sandbox::SandboxDto;

use super::error::ApiError;
use super::extract::Params;
use crate::preview::{PortPreviewUrl, PreviewError, SignedPortPreviewUrl, parse_port};
use crate::service::keys::Principal;
use crate::state::AppState;

impl From<PreviewError> for ApiError {
    fn from(e: PreviewError) -> Self {
        ApiError::classify(e.kind(), &e)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandbox/{id}/ports/{port}/preview-url", get(preview_url))
        .route("/sandbox/{id}/ports/{port}/signed-preview-url", get(signed_url))
        .route("/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire", post(expire_signed_url))
        .route("/sandbox/{id}/public/{is_public}", post(set_public))
}

/// In front of every route: preview host names (whatever the path) and `/preview/…` go to
/// the proxy, everything else to the API.
pub async fn dispatch(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match s.preview.route(&req) {
        None => next.run(req).await,
        Some(Ok(route)) => s.preview.serve(route, req).await,
        Some(Err(e)) => e.into_proxy_response(),
    }
}

async fn preview_url(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, port)): Path<(String, String)>,
) -> Result<Json<PortPreviewUrl>, ApiError> {
    Ok(Json(s.preview.preview_url(&who, &id, parse_port(&port)?).await?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedQuery {
    expires_in_seconds: Option<i64>,
}

async fn signed_url(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, port)): Path<(String, String)>,
    Params(q): Params<SignedQuery>,
) -> Result<Json<SignedPortPreviewUrl>, ApiError> {
    Ok(Json(s.preview.signed_url(&who, &id, parse_port(&port)?, q.expires_in_seconds).await?))
}

async fn expire_signed_url(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, port, token)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.preview.expire_signed_url(&who, &id, parse_port(&port)?, &token).await?;
    Ok(Json(serde_json::json!({})))
}

async fn set_public(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, is_public)): Path<(String, String)>,
) -> Result<Json<SandboxDto>, ApiError> {
    let public = match is_public.as_str() {
        "true" => true,
        "false" => false,
        other => return Err(PreviewError::BadPublic(other.to_string()).into()),
    };
    let id = s.preview.set_public(&who, &id, public).await?;
    Ok(Json(s.sandboxes.get(&who, &id).await?))
}
