//! `/snapshots`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cove_types::ErrorKind;
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
        .route("/snapshots/{id}/build-logs-url", get(build_logs_url))
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
) -> Result<Json<()>, ApiError> {
    let snap = s.snapshots.get(&who, &id).await?;
    Err(ApiError::new(
        ErrorKind::NotFound,
        format!("snapshot {} has no build info: it was pulled from {}", snap.name, snap.image_name),
    ))
}
