//! `/sandbox` and the toolbox proxy `/toolbox/{id}/…`.

use std::collections::BTreeMap;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{any, get, post, put};
use axum::{Extension, Json, Router};
use cove_types::ErrorKind;
use cove_types::sandbox::{CreateSandbox, ListSandboxesResponse, SandboxDto, UpdateNetworkSettings};

use super::error::ApiError;
use super::extract::{Body, Params};
use crate::service::keys::Principal;
use crate::service::lifecycle::Interval;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandbox", post(create).get(list))
        .route("/sandbox/{id}", get(get_one).delete(delete))
        .route("/sandbox/{id}/start", post(start))
        .route("/sandbox/{id}/stop", post(stop))
        .route("/sandbox/{id}/labels", put(set_labels))
        .route("/sandbox/{id}/network-settings", post(update_network))
        .route("/sandbox/{id}/toolbox-proxy-url", get(toolbox_url))
        .route("/sandbox/{id}/build-logs-url", get(build_logs_url))
        .route("/sandbox/{id}/build-logs", get(build_logs))
        .route("/sandbox/{id}/archive", post(archive))
        .route("/sandbox/{id}/autostop/{interval}", post(set_autostop))
        .route("/sandbox/{id}/autoarchive/{interval}", post(set_autoarchive))
        .route("/sandbox/{id}/autodelete/{interval}", post(set_autodelete))
        .route("/sandbox/{id}/last-activity", post(refresh_activity))
}

async fn archive(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.archive(&who, &id).await?))
}

async fn set_autostop(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.set_interval(&who, &id, Interval::Stop, &n).await?))
}

async fn set_autoarchive(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.set_interval(&who, &id, Interval::Archive, &n).await?))
}

async fn set_autodelete(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.set_interval(&who, &id, Interval::Delete, &n).await?))
}

/// `refresh_activity`: 201 with no body, as the SDKs expect.
async fn refresh_activity(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    s.sandboxes.refresh_activity(&who, &id).await?;
    Ok(axum::http::StatusCode::CREATED)
}

async fn build_logs_url(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rec = s.sandboxes.built_sandbox(&who, &id).await?;
    // No query string: the SDKs append `?follow=true` to it.
    Ok(Json(serde_json::json!({ "url": format!("{}/api/sandbox/{}/build-logs", s.public_url, rec.id) })))
}

async fn build_logs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Params(q): Params<super::snapshots::LogsQuery>,
) -> Result<Response, ApiError> {
    let stream = s.sandboxes.build_logs(&who, &id, q.follow.unwrap_or(false)).await?;
    Ok(super::snapshots::log_response(stream))
}

/// Mounted at the root, next to `/api`: `{toolboxProxyUrl}/{id}/{path}`.
pub fn toolbox_router() -> Router<AppState> {
    Router::new().route("/toolbox/{id}/{*path}", any(toolbox))
}

async fn update_network(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<UpdateNetworkSettings>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.update_network(&who, &id, req).await?))
}

async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Body(req): Body<CreateSandbox>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.create(&who, req).await?))
}

async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Json<ListSandboxesResponse>, ApiError> {
    let q = crate::service::sandbox_list::ListQuery::parse(q.as_deref())?;
    Ok(Json(s.sandboxes.list_page(&who, &q).await?))
}

async fn get_one(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.get(&who, &id).await?))
}

async fn start(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.start(&who, &id).await?))
}

/// `POST /sandbox/{id}/stop?force=true`: the SDKs' `stop(force=True)` kills at once.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    /// Kill the sandbox's processes at once instead of a SIGTERM and a grace period.
    force: Option<bool>,
}

async fn stop(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Params(p): Params<StopParams>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.stop_with(&who, &id, p.force.unwrap_or(false)).await?))
}

async fn delete(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDto>, ApiError> {
    Ok(Json(s.sandboxes.delete(&who, &id).await?))
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Labels {
    labels: BTreeMap<String, String>,
}

async fn set_labels(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(b): Body<Labels>,
) -> Result<Json<Labels>, ApiError> {
    Ok(Json(Labels { labels: s.sandboxes.set_labels(&who, &id, b.labels).await? }))
}

async fn toolbox_url(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.sandboxes.get(&who, &id).await?;
    Ok(Json(serde_json::json!({ "url": s.sandboxes.toolbox_url() })))
}

async fn toolbox(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let agent = s.sandboxes.toolbox_agent(&who, &id).await?;
    // Activity for auto-stop: now, while in flight, and at the answer.
    let _active = s.sandboxes.lifecycle().begin_request(&agent.sandbox_id);
    let target = match req.uri().query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    crate::toolbox::forward(&agent, req, &target)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Unavailable, cove_types::error::chain(&e)))
}
