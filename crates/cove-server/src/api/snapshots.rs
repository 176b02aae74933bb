//! `/snapshots`.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cove_types::dto::{CreateSnapshot, PaginatedSnapshots, SnapshotDto};

use super::error::ApiError;
use super::extract::{Body, Params};
use crate::service::keys::Principal;
use crate::service::snapshots::ListParams;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/snapshots", post(create).get(list))
        .route("/snapshots/{id}", get(get_one).delete(delete))
        .route("/snapshots/{id}/activate", post(activate))
        .route("/snapshots/{id}/deactivate", post(deactivate))
        .route("/snapshots/{id}/pull", post(pull_again))
        .route("/snapshots/{id}/build-logs-url", get(build_logs_url))
        .route("/snapshots/{id}/build-logs", get(build_logs))
}

async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(req): Body<CreateSnapshot>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.snapshots.create(&who, req).await?))
}

async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Params(p): Params<ListParams>,
) -> Result<Json<PaginatedSnapshots>, ApiError> {
    Ok(Json(s.snapshots.list(&who, p).await?))
}

async fn get_one(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.snapshots.get(&who, &id).await?))
}

async fn activate(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.snapshots.activate(&who, &id).await?))
}

/// Cove's own: pulls the snapshot's image name again and pins what it names now (an admin
/// key for a general snapshot).
async fn pull_again(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotDto>, ApiError> {
    Ok(Json(s.snapshots.pull_again(&who, &id).await?))
}

async fn deactivate(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.snapshots.deactivate(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.snapshots.delete(&who, &id).await?;
    Ok(StatusCode::OK)
}

async fn build_logs_url(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = s.snapshots.built_snapshot_id(&who, &id).await?;
    // No query string: the SDKs append `?follow=true` to it.
    Ok(Json(serde_json::json!({ "url": format!("{}/api/snapshots/{id}/build-logs", s.public_url) })))
}

async fn build_logs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Params(q): Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let stream = s.snapshots.build_logs(&who, &id, q.follow.unwrap_or(false)).await?;
    Ok(log_response(stream))
}

/// `?follow=true|false`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LogsQuery {
    /// Keep streaming until the build ends.
    pub follow: Option<bool>,
}

/// A build log as a streamed plain-text body (one chunk per write, so lines arrive as they
/// are logged).
pub fn log_response(
    stream: impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
